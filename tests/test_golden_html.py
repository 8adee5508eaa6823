"""Golden tests: css_inline + click_tracking + open_pixel together over every sample and every real
template in ../shared/corpus/eml, with both CSS engines.

What must hold for each output: the standard library parses it and decodes the HTML to the same
text we produced; doctype and conditional comments are intact; every tracked link decodes to
exactly the URL the original href meant; one pixel per HTML part; attachments and text/plain
parts are byte-identical.
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any

import html5lib
import pytest

from pipeline import Message
from pipeline.chain.driver import run_chain
from pipeline.toolkit.html import count_conditional_comments
from pipeline.toolkit.tokens import TokenSigner
from tests.support import corpus_files, sample_files

BASE = "https://track.example.net"
KEY = "golden-secret"
SIGNER = TokenSigner({"k1": KEY.encode()}, "k1")
CLICK = re.compile(re.escape(BASE) + r"/c/([A-Za-z0-9_-]+\.k1\.[A-Za-z0-9_-]+)")
PIXEL = re.compile(r'<img src="' + re.escape(BASE) + r'/o/([A-Za-z0-9_-]+\.k1\.[A-Za-z0-9_-]+)\.gif"')
COND_BLOCK = re.compile(r"<!--\[if.*?-->|<!--<!\[endif\]-->", re.DOTALL | re.IGNORECASE)  # each comment on its own
DOCTYPE = re.compile(r"\A\s*(<!doctype[^>]*>)", re.IGNORECASE)
RCPTS = ["first@example.com", "second@example.org"]
UNDECODABLE = re.compile("[\udc80-\udcff]")


def run_all(raw: bytes, engine: str, tmp_path: Path) -> list[Message]:
    config: dict[str, Any] = {
        "gateway": {"data_dir": str(tmp_path / "data")},
        "tracking": {"keys": {"k1": KEY}, "base_url": BASE},
        "plugins": {"css_inline": {"engine": engine}},
        "features": {"inlinecss": True, "trackclicks": True, "trackopens": True},
    }
    result = run_chain(raw, ["css_inline", "click_tracking", "open_pixel"], config=config, rcpt_tos=RCPTS)
    assert result.verdict is None
    assert [c.recipient for c in result.copies] == RCPTS
    assert all(c.deliverable for c in result.copies), [c.verdict for c in result.copies]
    return [Message(c.data) for c in result.copies]


def lxml_hrefs(html: str) -> list[str]:
    """The ``href`` of every ``<a>`` as a browser reads it: html5lib implements the WHATWG
    tokenizer (libxml2 decodes ``&region=`` in an attribute, which no browser does)."""
    root = html5lib.parse(html, namespaceHTMLElements=False)
    return [a.get("href") for a in root.iter("a") if a.get("href") is not None]


def control_headers_removed(raw: bytes) -> Message:
    """The input as the chain sees it after admission (X-SMTPeter-* headers consumed)."""
    msg = Message(raw)
    for name in {h.name for h in msg.headers if h.name.lower().startswith("x-smtpeter-")}:
        msg.remove_header(name)
    return msg


@pytest.mark.parametrize("engine", ["premailer", "css_inline"])
@pytest.mark.parametrize("path", sample_files() + corpus_files(), ids=lambda p: p.name)
def test_all_html_plugins_golden(path: Path, engine: str, tmp_path: Path) -> None:
    raw = path.read_bytes()
    before = control_headers_removed(raw)
    tracks_clicks = "X-SMTPeter-TrackClicks: false" not in raw.decode("ascii", "replace")
    for rcpt, after in zip(RCPTS, run_all(raw, engine, tmp_path), strict=True):
        # 1. the standard library parses it, and decodes each HTML part to the text we wrote
        parsed = email.message_from_bytes(after.as_bytes(), policy=email.policy.default)
        std_html = [p for p in parsed.walk() if p.get_content_type() == "text/html" and not p.is_attachment()]
        assert len(std_html) == len(after.html_parts())
        for std, ours in zip(std_html, after.html_parts(), strict=True):
            # (undecodable bytes, e.g. enKod's literal "QP" HTML: the stdlib shows U+FFFD, we keep the byte)
            assert std.get_content().replace("\r\n", "\n") == UNDECODABLE.sub("\ufffd", ours.text()).replace("\r\n", "\n")

        # 2. MIME structure kept; attachments and text/plain parts byte-identical
        old_leaves = [p for p in before.walk() if not p.is_multipart]
        new_leaves = [p for p in after.walk() if not p.is_multipart]
        assert [(p.path, p.content_type) for p in new_leaves] == [(p.path, p.content_type) for p in old_leaves]
        for old, new in zip(old_leaves, new_leaves, strict=True):
            if old.content_type != "text/html" or old.is_attachment:
                assert new.as_bytes() == old.as_bytes(), old.path
            else:
                assert (new.charset or "us-ascii").lower() == (old.charset or "us-ascii").lower()

        for old_part, new_part in zip(before.html_parts(), after.html_parts(), strict=True):
            old, new = old_part.text(), new_part.text()
            # 3. doctype and conditional comments
            d_old, d_new = DOCTYPE.match(old), DOCTYPE.match(new)
            assert (d_new and d_new.group(1)) == (d_old and d_old.group(1))
            assert count_conditional_comments(new) == count_conditional_comments(old)
            if old.count("<!--") == old.count("-->"):  # (enKod's literal has one that never ends: a tree closes it)
                assert [b.replace("\r\n", "\n") for b in COND_BLOCK.findall(new)] == [
                    b.replace("\r\n", "\n") for b in COND_BLOCK.findall(old)
                ]
            # 4. every tracked link decodes to exactly the original href, in document order
            restored = []
            for href in lxml_hrefs(new):
                m = CLICK.fullmatch(href)
                if m:
                    payload = SIGNER.verify(m.group(1))
                    assert payload is not None and payload["r"] == rcpt and payload["k"] == "c"
                    restored.append(payload["u"])
                else:
                    restored.append(href)
            assert restored == lxml_hrefs(old)
            if not tracks_clicks:
                assert not CLICK.search(new)
            # 5. exactly one pixel, for this recipient
            pixels = PIXEL.findall(new)
            assert len(pixels) == 1
            assert SIGNER.verify(pixels[0])["r"] == rcpt


def test_golden_inputs_are_present() -> None:
    """The golden test above is vacuous without its inputs."""
    assert len(sample_files()) >= 18
    assert len(corpus_files()) >= 11
    tracked_samples = [p for p in sample_files() if "<a " in p.read_text("latin-1")]
    assert len(tracked_samples) >= 10


@pytest.mark.parametrize(
    "junk",
    ['<a "', "<a href=x ", "<b", "</", "<style ", "<!doctype"],
    ids=["unclosed-quote", "unclosed-a", "unclosed-b", "unclosed-end", "unclosed-style", "doctypes"],
)
def test_hostile_unterminated_tags_take_linear_time(junk: str, tmp_path: Path) -> None:
    """Half a megabyte of tags that never close: the tokenizers must not go quadratic (that took
    35 s for 40 kB before they refused to let a tag span a "<"), and the message is delivered."""
    import time

    body = "<html><head><style>p { color: red; }</style></head><body><p>x</p>" + junk * 100_000 + "</body></html>"
    raw = (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
    ).encode()
    start = time.perf_counter()
    (after, _) = run_all(raw, "premailer", tmp_path)
    assert time.perf_counter() - start < 8
    assert len(PIXEL.findall(after.html_parts()[0].text())) == 1
