"""Links are read exactly as a browser reads an ``href``: a property test against html5lib, which
implements the WHATWG tokenizer (the rule for character references inside attribute values)."""

from __future__ import annotations

import html5lib
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.toolkit.html import find_links, href_to_url, unescape_attribute

# Pieces that exercise the attribute rule: legacy names (valid without ";"), names that exist
# only with ";", numeric references, and the characters that decide (=, letters, digits, ;).
PIECES = st.sampled_from(
    ["&", "&amp", "&amp;", "&reg", "&region", "&curren", "&currency", "&not", "&notin", "&notit;", "&copy",
     "&copy;", "&lt", "&gt;", "&para", "&sect", "&times", "&quot", "&nbsp", "&AMP", "&eacute", "&#65", "&#x41;",
     "&#0;", "&#x110000;", "&#128;", "&zzz;", "=", ";", "a", "Z", "9", "?", "/", "-", "#", " ", "%20", "é", "x=1"]
)
HREFS = st.lists(PIECES, max_size=12).map("".join)


def browser_reading(raw: str) -> str:
    root = html5lib.parse(f'<a href="{raw}">x</a>', namespaceHTMLElements=False)
    value = next(root.iter("a")).get("href")
    assert value is not None
    return value


@settings(max_examples=200, deadline=None)
@given(HREFS)
def test_attribute_values_are_decoded_as_the_html5_tokenizer_does(raw: str) -> None:
    assert unescape_attribute(raw) == browser_reading(raw)


@settings(max_examples=200, deadline=None)
@given(HREFS)
def test_the_link_finder_reads_each_href_as_a_browser_would(raw: str) -> None:
    [link] = find_links(f'<p><a href="{raw}">x</a></p>')
    assert link.url == href_to_url(raw)
    assert unescape_attribute(link.raw_href) == browser_reading(raw)


def test_issue_10_links_redirect_to_exactly_what_was_written():
    url = "https://shop.example.com/p?id=1&region=eu&currency=USD&notify=1&lang=en"
    assert href_to_url(url) == url
    assert href_to_url("?copy=&copy;&copy=1&lt;") == "?copy=\u00a9&copy=1<"
    assert href_to_url("?a=1&amp;b=2&not x") == "?a=1&b=2\u00ac x"
