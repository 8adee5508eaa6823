"""click_tracking: which links are rewritten, that every token decodes to the exact original URL,
and that nothing but the href values changes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from pipeline import Message, MessageContext, Plugin, hookimpl
from pipeline.chain.driver import make_chain, make_config, run_chain
from pipeline.config import ConfigError
from pipeline.toolkit.tokens import TokenSigner
from tests.support import SAMPLES, corpus_files, sample_files

BASE = "https://t.example.net"
KEY = "click-test-secret"
SIGNER = TokenSigner({"k1": KEY.encode()}, "k1")
TRACKED = re.compile(re.escape(BASE) + r"/c/([A-Za-z0-9_-]+\.k1\.[A-Za-z0-9_-]+)")


class SetCampaign(Plugin):
    """Stands in for campaign_tag: records campaign and letter ids on the context."""

    name = "test_set_campaign"

    @hookimpl
    def on_message(self, ctx: MessageContext) -> None:
        ctx.campaign_id, ctx.letter_id = "weekly-2026-11", "issue_7"


def config(tmp_path: Path, **plugin_cfg: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "gateway": {"data_dir": str(tmp_path / "data")},
        "tracking": {"keys": {"k1": KEY}, "key_id": "k1", "base_url": BASE},
    }
    if plugin_cfg:
        cfg["plugins"] = {"click_tracking": plugin_cfg}
    return cfg


def track(raw: bytes, tmp_path: Path, rcpts: list[str] | None = None, extra: tuple[Any, ...] = (), **cfg: Any):
    result = run_chain(raw, ["click_tracking", *extra], config=config(tmp_path, **cfg), rcpt_tos=rcpts)
    assert result.verdict is None
    assert all(c.deliverable for c in result.copies), [c.verdict for c in result.copies]
    return result


def html_of(data: bytes) -> list[str]:
    return [p.text() for p in Message(data).html_parts()]


def decode(token: str) -> dict[str, Any]:
    payload = SIGNER.verify(token)
    assert payload is not None, f"token does not verify: {token}"
    return payload


def lxml_hrefs(html: str) -> list[str]:
    """Independent oracle: the href of every <a> as lxml reads it (entities decoded)."""
    root = etree.fromstring(html, etree.HTMLParser())
    return [] if root is None else [a.get("href") for a in root.iter("a") if a.get("href") is not None]


def href_values_removed(html: str) -> str:
    return re.sub(r"""(?i)(\shref\s*=\s*)("[^"]*"|'[^']*'|[^\s>]+)""", r"\1", html)


TRICKY_TRACKED = [
    "https://shop.example.com/p?id=1&ref=news&utm_source=email",
    "https://example.com/search?q=caf%C3%A9%20cr%C3%A8me&x=%2F",
    "http://legacy.example.org/old-page?ref=email",
    "https://example.com/Recipes/Cafe-Creme?Print=Yes",
    "https://example.net/gift-cards?amount=25&currency=EUR",
]
TRICKY_UNTOUCHED = [
    'href="mailto:sales@example.com?subject=Hi&amp;body=Hello"',
    'href="tel:+15551234567"',
    'href="{{ unsubscribe_url }}"',
    'href="https://example.com/account/settings" data-no-track',
    'href="https://example.com/privacy" clicktracking="off"',
    'href="https://example.com/terms" data-track-disabled',
    'href="https://example.com/help" ses:no-track',
    '<a href="https://example.com/verify">https://example.com/verify</a>',
    'href="#top"',
]


def test_tricky_links_only_real_http_links_are_tracked_and_decode_exactly(tmp_path: Path) -> None:
    raw = (SAMPLES / "13-tricky-links.eml").read_bytes()
    copy = track(raw, tmp_path, ["jane.doe@example.org"]).copies[0]
    html = html_of(copy.data)[0]
    urls = [decode(t)["u"] for t in TRACKED.findall(html)]
    assert urls == TRICKY_TRACKED
    for snippet in TRICKY_UNTOUCHED:
        assert snippet in html, snippet
    # quoting kept: the single-quoted href is still single-quoted
    assert re.search(r"href='" + re.escape(BASE) + r"/c/[^']+'>Gift cards", html)


def test_tricky_links_everything_but_href_values_is_unchanged(tmp_path: Path) -> None:
    raw = (SAMPLES / "13-tricky-links.eml").read_bytes()
    before = Message(raw)
    after = Message(track(raw, tmp_path).copies[0].data)
    assert href_values_removed(after.html_parts()[0].text()) == href_values_removed(before.html_parts()[0].text())
    # the text/plain alternative is not rewritten by default
    assert after.text_parts()[0].as_bytes() == before.text_parts()[0].as_bytes()


@pytest.mark.parametrize("path", sample_files() + corpus_files(), ids=lambda p: p.name)
def test_every_tracked_link_decodes_back_to_the_href_lxml_reads(path: Path, tmp_path: Path) -> None:
    raw = path.read_bytes()
    before = html_of(raw)
    after = html_of(track(raw, tmp_path, ["r@example.com"]).copies[0].data)
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        restored = []
        for href in lxml_hrefs(new):
            m = TRACKED.fullmatch(href)
            if m:
                payload = decode(m.group(1))
                assert payload["k"] == "c" and payload["r"] == "r@example.com"
                restored.append(payload["u"])
            else:
                restored.append(href)
        assert restored == lxml_hrefs(old)


def test_corpus_links_are_actually_tracked(tmp_path: Path) -> None:
    """The oracle test above would pass if nothing were rewritten: check the corpus gets tracked."""
    tracked = 0
    for path in corpus_files():
        tracked += len(TRACKED.findall("".join(html_of(track(path.read_bytes(), tmp_path).copies[0].data))))
    assert tracked >= 20  # 24 http(s) links in the corpus; the rest are "#", mailto: and tel:


def test_two_hundred_links_three_recipients_three_copies_with_their_own_tokens(tmp_path: Path) -> None:
    raw = (SAMPLES / "18-large-links.eml").read_bytes()
    rcpts = ["ann@example.com", "bob@example.org", "cid@example.net"]
    result = track(raw, tmp_path, rcpts, extra=(SetCampaign,))
    assert [c.recipient for c in result.copies] == rcpts
    original = lxml_hrefs(html_of(raw)[0])
    assert len(original) == 200
    seen_tokens: set[str] = set()
    for copy in result.copies:
        tokens = TRACKED.findall(html_of(copy.data)[0])
        assert len(tokens) == 200
        payloads = [decode(t) for t in tokens]
        assert [p["u"] for p in payloads] == original
        assert {p["r"] for p in payloads} == {copy.recipient}
        assert {(p["c"], p["l"], p["q"]) for p in payloads} == {("weekly-2026-11", "issue_7", result.ctx.queue_id)}
        assert not seen_tokens & set(tokens)
        seen_tokens |= set(tokens)
    assert len(seen_tokens) == 600


def test_text_parts_option_rewrites_bare_urls_in_plain_text(tmp_path: Path) -> None:
    raw = (SAMPLES / "13-tricky-links.eml").read_bytes()
    after = Message(track(raw, tmp_path, text_parts=True).copies[0].data)
    text = after.text_parts()[0].text()
    urls = [decode(t)["u"] for t in TRACKED.findall(text)]
    assert urls == [
        "https://shop.example.com/p?id=1&ref=news&utm_source=email",
        "https://example.com/search?q=caf%C3%A9%20cr%C3%A8me&x=%2F",
        "https://example.com/verify",
        "http://legacy.example.org/old-page?ref=email",
    ]
    assert "{{ unsubscribe_url }}" in text and "sales@example.com" in text
    assert after.text_parts()[0].get_header("Content-Transfer-Encoding") == "quoted-printable"


def test_text_url_before_a_placeholder_is_left_for_the_merge(tmp_path: Path) -> None:
    raw = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\nContent-Type: text/plain\r\n\r\n"
        b"Go to https://example.com/u?id={{ id }} or (https://example.com/x).\r\n"
    )
    text = Message(track(raw, tmp_path, text_parts=True).copies[0].data).text_parts()[0].text()
    assert "https://example.com/u?id={{ id }}" in text
    (token,) = TRACKED.findall(text)
    assert decode(token)["u"] == "https://example.com/x"
    assert text.endswith(").\r\n") or text.endswith(").\n")


def test_visible_url_links_are_tracked_when_skip_visible_urls_is_off(tmp_path: Path) -> None:
    raw = (SAMPLES / "13-tricky-links.eml").read_bytes()
    html = html_of(track(raw, tmp_path, skip_visible_urls=False).copies[0].data)[0]
    assert "https://example.com/verify" in [decode(t)["u"] for t in TRACKED.findall(html)]


def html_message(body: str) -> bytes:
    return (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
    ).encode()


def test_already_tracked_links_are_not_wrapped_twice(tmp_path: Path) -> None:
    once = track(html_message('<a href="https://example.com/a">A</a>'), tmp_path).copies[0].data
    twice = track(once, tmp_path).copies[0].data
    assert html_of(twice) == html_of(once)


def test_unquoted_href_gets_quotes_and_other_attributes_stay(tmp_path: Path) -> None:
    body = "<p><a class=btn href=https://example.com/a?x=1&amp;y=2 target=_blank>Go</a></p>"
    html = html_of(track(html_message(body), tmp_path).copies[0].data)[0]
    (token,) = TRACKED.findall(html)
    assert decode(token)["u"] == "https://example.com/a?x=1&y=2"
    assert html == f'<p><a class=btn href="{BASE}/c/{token}" target=_blank>Go</a></p>'


@pytest.mark.parametrize(
    ("tag", "tracked"),
    [
        ('<a href="https://example.com/" data-no-track="false">', True),
        ('<a href="https://example.com/" clicktracking="on">', True),
        ('<a href="https://example.com/" clicktracking="OFF">', False),
        ('<a href="javascript:alert(1)">', False),
        ('<a href="/relative/path">', False),
        ('<a href="  https://example.com/\n  ">', True),
        ('<a href="https://example.com/?u=*|EMAIL|*">', False),
        ('<a name="top">', False),
    ],
)
def test_tracking_decision_per_tag(tag: str, tracked: bool, tmp_path: Path) -> None:
    html = html_of(track(html_message(f"<p>{tag}Link</a></p>"), tmp_path).copies[0].data)[0]
    tokens = TRACKED.findall(html)
    assert bool(tokens) is tracked
    if tracked:
        assert decode(tokens[0])["u"] == "https://example.com/"


def test_links_inside_mso_conditional_comments_are_not_rewritten(tmp_path: Path) -> None:
    raw = (SAMPLES / "03-mso-conditional.eml").read_bytes()
    html = html_of(track(raw, tmp_path).copies[0].data)[0]
    assert len(TRACKED.findall(html)) == 3
    vml = re.search(r"<v:roundrect[^>]*>", html)
    assert vml is not None and 'href="https://events.example.com/' in vml.group(0)


@pytest.mark.parametrize(
    ("sample", "charset", "cte"),
    [
        ("04-russian-windows-1251.eml", "windows-1251", "8bit"),
        ("05-spanish-iso-8859-1.eml", "iso-8859-1", "quoted-printable"),
        ("09-base64-html.eml", "utf-8", "base64"),
    ],
)
def test_charset_and_transfer_encoding_are_kept(sample: str, charset: str, cte: str, tmp_path: Path) -> None:
    raw = (SAMPLES / sample).read_bytes()
    before = Message(raw).html_parts()[0]
    after = Message(track(raw, tmp_path).copies[0].data).html_parts()[0]
    assert (after.charset, after.cte) == (charset, cte) == (before.charset, before.cte)
    assert TRACKED.search(after.text())
    assert href_values_removed(after.text()) == href_values_removed(before.text())


def test_feature_switch_off_leaves_links_alone(tmp_path: Path) -> None:
    raw = (SAMPLES / "11-smtpeter-control-headers.eml").read_bytes()
    assert "X-SMTPeter-TrackClicks: false" in raw.decode()
    html = html_of(track(raw, tmp_path).copies[0].data)[0]
    assert not TRACKED.search(html) and "https://" in html


def test_base_url_from_plugin_config_overrides_tracking_section(tmp_path: Path) -> None:
    result = run_chain(
        html_message('<a href="https://example.com/">x</a>'),
        ["click_tracking"],
        config={**config(tmp_path), "plugins": {"click_tracking": {"base_url": "https://clicks.example.org/"}}},
    )
    assert 'href="https://clicks.example.org/c/' in html_of(result.copies[0].data)[0]


def test_invalid_base_url_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    cfg = make_config({**config(tmp_path), "plugins": {"click_tracking": {"base_url": "ftp://x"}}}, ["click_tracking"])
    with pytest.raises(ConfigError, match=r"plugins\.click_tracking\.base_url: base_url must be an absolute"):
        make_chain(cfg)


def test_generated_key_is_reused_across_restarts(tmp_path: Path) -> None:
    cfg = {"gateway": {"data_dir": str(tmp_path / "data")}, "tracking": {"base_url": BASE}}
    raw = html_message('<a href="https://example.com/">x</a>')
    first = TRACKED.findall(html_of(run_chain(raw, ["click_tracking"], config=cfg).copies[0].data)[0])
    key = (tmp_path / "data" / "tracking.key").read_text().strip()
    assert (tmp_path / "data" / "tracking.key").stat().st_mode & 0o777 == 0o600
    signer = TokenSigner({"k1": key.encode()}, "k1")
    second = TRACKED.findall(html_of(run_chain(raw, ["click_tracking"], config=cfg).copies[0].data)[0])
    assert signer.verify(first[0])["u"] == signer.verify(second[0])["u"] == "https://example.com/"


def test_url_with_undecodable_bytes_is_left_as_sent(tmp_path: Path) -> None:
    raw = html_message("") + b'<a href="https://example.com/caf\xe9">bad</a> <a href="https://example.com/ok">ok</a>'
    part = Message(track(raw, tmp_path).copies[0].data).html_parts()[0]
    assert b'href="https://example.com/caf\xe9"' in part.body
    assert [decode(t)["u"] for t in TRACKED.findall(part.text())] == ["https://example.com/ok"]


@pytest.mark.parametrize("padding", [0, 3000], ids=["short text, scanned per copy", "long text, one scan"])
def test_every_copy_tracks_exactly_the_links_the_first_copy_tracks(padding: int, tmp_path: Path) -> None:
    """Which links are left alone is worked out once per scan and reused by the next copies (a
    text too short to be remembered is scanned anew for each): with tracked and untouched links
    mixed, every copy of three tracks the same links, with its own tokens."""
    links = "".join(f'<p><a href="{u}">link</a></p>' for u in TRICKY_TRACKED) + "".join(
        f"<p><a {a}>x</a></p>" if a.startswith("href") else f"<p>{a}</p>" for a in TRICKY_UNTOUCHED
    )
    html = f"<html><body><!--{'p' * padding}-->{links}</body></html>"
    raw = (
        "From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
    ).encode()
    result = track(raw, tmp_path, ["ann@example.com", "bob@example.org", "cid@example.net"])
    for copy in result.copies:
        out = html_of(copy.data)[0]
        assert [decode(t)["u"] for t in TRACKED.findall(out)] == TRICKY_TRACKED
        assert all(untouched in out for untouched in TRICKY_UNTOUCHED)
