"""open_pixel: exactly one signed pixel per HTML part, in the right place, nothing else changed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from pipeline import Message
from pipeline.chain.driver import run_chain
from pipeline.toolkit.tokens import TokenSigner
from tests.support import SAMPLES, corpus_files, sample_files

BASE = "https://t.example.net"
KEY = "pixel-test-secret"
SIGNER = TokenSigner({"k1": KEY.encode()}, "k1")
PIXEL = re.compile(r'<img src="' + re.escape(BASE) + r'/o/([A-Za-z0-9_-]+\.k1\.[A-Za-z0-9_-]+)\.gif"[^>]*>')


def pixel_run(raw: bytes, tmp_path: Path, rcpts: list[str] | None = None, **overrides: Any):
    cfg: dict[str, Any] = {
        "gateway": {"data_dir": str(tmp_path / "data")},
        "tracking": {"keys": {"k1": KEY}, "base_url": BASE},
        **overrides,
    }
    result = run_chain(raw, ["open_pixel"], config=cfg, rcpt_tos=rcpts)
    assert result.verdict is None and all(c.deliverable for c in result.copies)
    return result


def html_message(body: str) -> bytes:
    return (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n" + body
    ).encode()


def html_files() -> list[Path]:
    return [p for p in sample_files() + corpus_files() if Message(p.read_bytes()).html_parts()]


@pytest.mark.parametrize("path", html_files(), ids=lambda p: p.name)
def test_exactly_one_pixel_per_html_part_just_before_the_last_body_end(path: Path, tmp_path: Path) -> None:
    raw = path.read_bytes()
    before = Message(raw)
    after = Message(pixel_run(raw, tmp_path, ["r@example.com"]).copies[0].data)
    for old, new in zip(before.html_parts(), after.html_parts(), strict=True):
        text = new.text()
        (m,) = list(PIXEL.finditer(text))
        # removing the pixel gives back the original text exactly
        assert text[: m.start()] + text[m.end() :] == old.text().replace("\r\n", "\n").replace("\n", "\r\n")
        closing = [b.start() for b in re.finditer(r"(?i)</body\s*>", text)]
        if closing and text.count("<!--") == text.count("-->"):  # (enKod's literal: an endless comment hides it)
            assert m.end() == closing[-1]
        payload = SIGNER.verify(m.group(1))
        assert payload is not None and payload["k"] == "o" and payload["r"] == "r@example.com"
    for old, new in zip(before.text_parts(), after.text_parts(), strict=True):
        assert new.as_bytes() == old.as_bytes()


def test_pixel_is_after_the_preheader(tmp_path: Path) -> None:
    text = Message(pixel_run((SAMPLES / "13-tricky-links.eml").read_bytes(), tmp_path).copies[0].data)
    html = text.html_parts()[0].text()
    assert html.index('class="preheader"') < PIXEL.search(html).start()


def test_fragment_without_body_gets_the_pixel_at_the_end_unwrapped(tmp_path: Path) -> None:
    msg = Message(pixel_run((SAMPLES / "16-no-body-tag.eml").read_bytes(), tmp_path).copies[0].data)
    html = msg.html_parts()[0].text()
    assert PIXEL.search(html).end() == len(html.rstrip())
    assert "<html" not in html.lower() and "<body" not in html.lower()


def test_body_end_inside_a_comment_or_script_is_not_used(tmp_path: Path) -> None:
    body = (
        "<html><body><p>Hi</p><script>var s = '</body>';</script>"
        "<!--[if mso]></body><![endif]--></body></html>"
    )
    html = Message(pixel_run(html_message(body), tmp_path).copies[0].data).html_parts()[0].text()
    assert PIXEL.search(html).end() == html.rindex("</body></html>")


def test_missing_body_end_puts_the_pixel_before_html_end(tmp_path: Path) -> None:
    html = Message(pixel_run(html_message("<html><p>Hi</p></html>\r\n"), tmp_path).copies[0].data).html_parts()[0]
    assert re.fullmatch(r"<html><p>Hi</p><img [^>]+></html>\r?\n", html.text())


def test_pixel_tag_is_invisible_and_has_empty_alt(tmp_path: Path) -> None:
    html = Message(pixel_run(html_message("<html><body>x</body></html>"), tmp_path).copies[0].data)
    img = etree.fromstring(html.html_parts()[0].text(), etree.HTMLParser()).find(".//img")
    assert (img.get("alt"), img.get("width"), img.get("height")) == ("", "1", "1")
    style = img.get("style")
    assert "display:block" in style and "width:1px" in style and "height:1px" in style and "border:0" in style


def test_each_recipient_gets_its_own_pixel_token(tmp_path: Path) -> None:
    rcpts = ["ann@example.com", "bob@example.org", "cid@example.net"]
    result = pixel_run((SAMPLES / "12-campaign-letter-ids.eml").read_bytes(), tmp_path, rcpts)
    payloads = []
    for copy in result.copies:
        (token,) = PIXEL.findall(Message(copy.data).html_parts()[0].text())
        payloads.append(SIGNER.verify(token))
    assert [p["r"] for p in payloads] == rcpts
    assert {p["q"] for p in payloads} == {result.ctx.queue_id}


def test_message_without_html_is_byte_identical(tmp_path: Path) -> None:
    raw = (SAMPLES / "01-plain-text.eml").read_bytes()
    assert pixel_run(raw, tmp_path).copies[0].data == Message(raw).as_bytes()


def test_charset_and_transfer_encoding_are_kept(tmp_path: Path) -> None:
    raw = (SAMPLES / "04-russian-windows-1251.eml").read_bytes()
    part = Message(pixel_run(raw, tmp_path).copies[0].data).html_parts()[0]
    assert (part.charset, part.cte) == ("windows-1251", "8bit")
    assert "Здравствуйте" in part.text() or re.search("[А-я]{5}", part.text())


def test_trackopens_off_adds_no_pixel(tmp_path: Path) -> None:
    raw = (SAMPLES / "13-tricky-links.eml").read_bytes()
    data = pixel_run(raw, tmp_path, features={"trackopens": False}).copies[0].data
    assert not PIXEL.search(Message(data).html_parts()[0].text())
