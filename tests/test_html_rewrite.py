"""pipeline.toolkit.html.rewrite_html: one tokenising pass that rewrites links and inserts the pixel,
exact for email HTML (doctype, MSO comments, entities, odd quoting), shared by click_tracking and
open_pixel, and linear in the number of HTML parts (counted in tokenizer calls, not wall time)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import html5lib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import Message
from pipeline.chain.driver import run_chain
from pipeline.toolkit import html as H
from pipeline.toolkit.html import Link, protect, rewrite_html, scan_html
from tests.support import html_reference as ref

PIXEL = '<img src="https://t.example.net/o/x.gif" alt="">'


def browser_hrefs(html: str) -> list[str]:
    """Every ``<a href>`` as the WHATWG tokenizer (html5lib) reads it, in document order."""
    root = html5lib.parse(html, namespaceHTMLElements=False)
    return [a.get("href") for a in root.iter("a") if a.get("href") is not None]


def mapped(prefix: str) -> Any:
    """An ``href`` callback that sends every link to ``prefix`` + the URL it read, and records what it read."""
    seen: list[str] = []

    def href(link: Link) -> str:
        seen.append(link.url)
        return prefix + str(len(seen))

    href.seen = seen  # type: ignore[attr-defined]
    return href


EMAIL = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN">\r\n'
    '<html xmlns:v="urn:schemas-microsoft-com:vml"><head><title>Sale &amp; more</title>'
    '<style>a[href] { color: red; } /* <a href="https://css.example/"> </body> */</style></head>\r\n'
    "<body><p class=preheader>Caf&eacute; &copy; 2026&nbsp;</p>"
    '<!--[if mso]><v:roundrect href="https://vml.example/b"><a href="https://mso.example/">x</a></body>'
    "<![endif]-->"
    '<a href="https://shop.example.com/p?id=1&region=eu&amp;currency=USD&copy=2">Shop</a>'
    "<a HREF = 'https://e.example/a?x=1&amp;y=\"2\"' class=x>Single</a>"
    "<a class=btn href=https://e.example/u?a=1&amp;b=2 target=_blank>Unquoted</a>"
    '<a href="https://first.example/" href="https://second.example/">Dup</a>'
    "<script>var s = '<a href=\"https://js.example/\">'; var e = '</body>';</script>"
    '<textarea><a href="https://ta.example/"></textarea>'
    "</body></html>\r\n"
)


def test_only_href_values_change_and_each_url_is_read_as_a_browser_reads_it() -> None:
    href = mapped("https://t.example.net/c/")
    out = rewrite_html(EMAIL, href=href)
    # the callback saw exactly the links a browser sees outside comments and raw text, read as it reads them
    assert href.seen == browser_hrefs(EMAIL)
    assert href.seen[0] == "https://shop.example.com/p?id=1&region=eu&currency=USD&copy=2"
    assert href.seen[1] == 'https://e.example/a?x=1&y="2"'
    # a browser now reads the new URLs, and every other character is as it was
    assert browser_hrefs(out) == [f"https://t.example.net/c/{i}" for i in range(1, 5)]
    pattern = re.escape(out)
    for i in range(1, 5):
        pattern = pattern.replace(re.escape(f"https://t.example.net/c/{i}"), ".*?", 1)
    assert re.fullmatch(pattern, out)
    assert out.replace(
        "https://t.example.net/c/1", "https://shop.example.com/p?id=1&region=eu&amp;currency=USD&copy=2"
    ).startswith(EMAIL[: EMAIL.index("<a HREF")])
    # doctype, MSO comment (its VML and <a> untouched), entities, script and textarea content kept
    assert out.startswith('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN">\r\n')
    assert (
        '<!--[if mso]><v:roundrect href="https://vml.example/b"><a href="https://mso.example/">x</a></body>'
        in out
    )
    assert "Caf&eacute; &copy; 2026&nbsp;" in out
    assert (
        "'<a href=\"https://js.example/\">'" in out
        and '<textarea><a href="https://ta.example/"></textarea>' in out
    )
    # quoting: single stays single, unquoted gets double quotes, the second duplicate href is untouched
    assert "<a HREF = 'https://t.example.net/c/2' class=x>" in out
    assert '<a class=btn href="https://t.example.net/c/3" target=_blank>' in out
    assert 'href="https://t.example.net/c/4" href="https://second.example/"' in out


def test_new_urls_are_escaped_so_a_browser_reads_exactly_them() -> None:
    new = "https://t.example.net/c/a?x=1&copy=2&lt;3'\"<>"
    html = "<p><a href='https://a.example/'>a</a> <a href=https://b.example/>b</a> <a href=\"https://c.example/\">c</a></p>"
    out = rewrite_html(html, href=lambda link: new)
    assert browser_hrefs(out) == [new, new, new]
    assert "<p><a href='" in out and out.endswith("</a></p>")


def test_pixel_goes_before_the_last_real_body_end_outside_comments_and_script() -> None:
    out = rewrite_html(EMAIL, snippet=PIXEL)
    assert out == EMAIL[: EMAIL.rindex("</body>")] + PIXEL + EMAIL[EMAIL.rindex("</body>") :]


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<html><p>Hi</p></html>\r\n", f"<html><p>Hi</p>{PIXEL}</html>\r\n"),
        ("<p>fragment</p>\r\n\r\n", f"<p>fragment</p>{PIXEL}\r\n\r\n"),
        ("<p>x</p><!-- </body> -->", f"<p>x</p><!-- </body> -->{PIXEL}"),
        ("<p>x</p></BODY >\n</HTML>", f"<p>x</p>{PIXEL}</BODY >\n</HTML>"),
        ("<p>never closed <!-- </body></html>", f"<p>never closed <!-- </body></html>{PIXEL}"),
    ],
    ids=["no-body", "fragment", "body-in-comment", "upper-case", "endless-comment"],
)
def test_pixel_without_a_real_body_end(html: str, expected: str) -> None:
    assert rewrite_html(html, snippet=PIXEL) == expected


def test_links_and_pixel_in_one_call_equal_the_two_calls_in_turn() -> None:
    both = rewrite_html(EMAIL, href=lambda link: "https://t.example.net/c/z", snippet=PIXEL)
    apart = rewrite_html(rewrite_html(EMAIL, href=lambda link: "https://t.example.net/c/z"), snippet=PIXEL)
    assert both == apart


def test_nothing_to_do_gives_back_the_same_text() -> None:
    text = "<p>no links</p>"
    assert rewrite_html(text, href=lambda link: "x") is text
    assert rewrite_html(EMAIL, href=lambda link: None) is EMAIL


# Pieces of email HTML, for the property test of the shifted scan.
PIECES = st.sampled_from(
    [
        "<a href='https://a.example/?x=1&amp;y=2'>A</a>",
        '<a href="#top">',
        "<a href=https://u.example/ x=1>",
        '<A HREF = "https://b.example/">B</A>',
        "<a name=x>",
        "</a>",
        "</body>",
        "</BODY >",
        "</html>",
        '<!--[if mso]><a href="https://m.example/"></body><![endif]-->',
        "<!-- x",
        "-->",
        "<script>",
        "</script>",
        "<style>",
        "</style>",
        "<p>",
        "text &amp; more",
        "&nbsp;",
        "<a",
        ">",
        "\r\n",
        "<title>",
        "</title>",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=20).map("".join), st.booleans(), st.booleans())
def test_the_scan_handed_on_is_the_scan_of_the_result(html: str, links: bool, pixel: bool) -> None:
    # long enough to be remembered, and not scanned before (so this call tokenises)
    html = f"<p>{uuid.uuid4().hex * 40}</p>{html}"
    assert len(html) >= H._REMEMBER_MIN
    out = rewrite_html(
        html,
        href=(lambda link: f"https://t.example.net/c/{link.tag_start}") if links else None,
        snippet=PIXEL if pixel else None,
    )
    assert scan_html(out) == H._tokenise(out)  # the remembered (shifted) scan is what a fresh pass finds


# -- cost: counted, not timed ------------------------------------------------------------------


class Counting:
    """Wraps the tokenizer: how many passes, over how many characters."""

    def __init__(self) -> None:
        self.calls = 0
        self.chars = 0
        self.real = H._tokenise

    def __call__(self, text: str) -> H.HtmlScan:
        self.calls += 1
        self.chars += len(text)
        return self.real(text)


def many_parts(n: int, nonce: str) -> bytes:
    head = (
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    )
    part = (
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><head><style>p{{color:red}}</style></head><body>"
        '<p><a href="https://example.com/p?id={i}&amp;n={nonce}">link {i}</a></p>'
        "<p>{text}</p></body></html>\r\n"
    )  # (text: parts long enough for their scans to be remembered; shorter ones are simply scanned again)
    text = "Lorem ipsum dolor sit amet. " * 40
    return (head + "".join(part.format(i=i, nonce=nonce, text=text) for i in range(n)) + "--b--\r\n").encode()


@pytest.mark.parametrize("parts", [10, 200])
def test_one_tokenising_pass_per_html_part_for_all_copies_clicks_and_pixel(
    parts: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = Counting()
    monkeypatch.setattr(H, "_tokenise", counting)
    protects: list[int] = []
    real_protect = H._tags_needing_work  # what protect() calls once per document

    def counting_protect(text: str) -> list[tuple[int, int]]:
        protects.append(len(text))
        return real_protect(text)

    monkeypatch.setattr(H, "_tags_needing_work", counting_protect)
    raw = many_parts(parts, uuid.uuid4().hex)
    config = {
        "gateway": {"data_dir": str(tmp_path / "data")},
        "tracking": {"keys": {"k1": "secret"}, "base_url": "https://t.example.net"},
        "plugins": {"css_inline": {"engine": "css_inline"}},
        "features": {"inlinecss": True, "trackclicks": True, "trackopens": True},
        "limits": {"max_html_parts": 1000},
    }
    rcpts = ["ann@example.com", "bob@example.org", "cid@example.net"]
    result = run_chain(raw, ["css_inline", "click_tracking", "open_pixel"], config=config, rcpt_tos=rcpts)
    assert result.verdict is None and all(c.deliverable for c in result.copies)
    inlined = 0
    for copy in result.copies:
        assert copy.data is not None
        html = [p.text() for p in Message(copy.data).html_parts()]
        assert len(html) == parts and all("/c/" in h and "/o/" in h and 'style="color' in h for h in html)
        inlined = sum(len(h) for h in html)
    # one pass per part (css_inline's output, shared by 3 copies; each pixel reuses the links' scan) ...
    assert counting.calls == parts
    # ... over the part's characters only (the pixel and the tracked links are not scanned again)
    assert counting.chars < inlined
    assert len(protects) == parts  # and one protection per part, for the CSS engine


def test_protect_looks_only_at_tags_with_a_url_or_an_ampersand(monkeypatch: pytest.MonkeyPatch) -> None:
    matched = ref.count_start_tag_matches(monkeypatch)
    plain = '<tr><td class="c" style="color:red; background: url(x.png)" width=1>cell</td></tr>' * 500
    linked = '<td><a href="https://e.example/?a=1&amp;b=2">x</a><img src="p.gif" alt="a&amp;b"></td>' * 3
    html = f"<html><body><table>{plain}{linked}</table></body></html>"
    prot = protect(html)
    assert len(prot.kept) == 6 and prot.restore(prot.text) == html
    assert len(matched) == 6  # each <a> and <img>, once; none of the 1,500 plain tags

    matched.clear()
    texts = '<tr><td class="c">a &amp; b &lt; c &gt; d</td></tr>' * 500  # three "&" after each <td>
    prot = protect(f"<html><body><table>{texts}</table></body></html>")
    assert not prot.kept and prot.text.count(H.AMP_MARK) == 1500
    assert len(matched) == len(set(matched)) <= 500  # a tag before an "&" in text is matched at most once
