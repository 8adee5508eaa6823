"""HTML helpers for plugins that edit email HTML: find links, insert a snippet, round-trip a document.

Email HTML is not web HTML: Outlook reads ``<!--[if mso]>`` comments, senders leave ``{{ }}``
placeholders for a later merge, lower-case ``<!doctype html>`` and entities must survive, and
a changed byte in a URL breaks a link. So there are two ways to edit here:

* **Splicing** (:func:`rewrite_html`, and the pieces it is made of: :func:`scan_html`,
  :func:`find_links`, :func:`splice`, :func:`insert_before_body_end`): one tokenising pass
  finds the exact character offsets of ``<a href>`` values and of ``</body>``/``</html>``
  outside comments, ``<script>``/``<style>`` and other raw-text elements; the caller replaces
  just those ranges, so every other character of the part stays identical. Click tracking and
  the open pixel both call :func:`rewrite_html`. The pass is remembered per text, and the result
  of an edit made here carries its own scan (offsets shifted, not re-tokenised): the pixel
  inserted after click tracking, or every recipient copy of one template, costs no second pass.
* **A document round trip** (:class:`HtmlDocument`): parse once with lxml, let a tool change the
  tree (premailer inlines CSS), serialise once. Before parsing, the text is *protected*: every
  ``&`` outside ``style`` attributes becomes a private-use marker (so entities come back
  exactly as written, ``&nbsp;`` stays ``&nbsp;``), URL attribute values (``href``, ``src``,
  ...) are replaced by opaque tokens (libxml2 would percent-escape spaces and non-ASCII in
  them, and ``{{ url }}`` with them), and the text before ``<html>`` (doctype, comments) and
  after ``</html>`` is cut off and put back verbatim. Only tags holding a URL attribute or an
  ``&`` are looked at one by one; everything else is handled by whole-text C-level scans, and
  :meth:`Protected.restore` finds its tokens by their literal prefix. lxml still normalises
  attribute quoting to ``"`` and void tags to ``<br>``: a tree round trip cannot promise more.
"""

from __future__ import annotations

import bisect
import functools
import html as _html
import itertools
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.entities import html5 as _html5_entities
from typing import cast

from lxml import etree

__all__ = [
    "HtmlDocument",
    "HtmlScan",
    "Link",
    "Protected",
    "body_end_offset",
    "count_conditional_comments",
    "find_links",
    "fit_charset",
    "has_stylesheet",
    "href_to_url",
    "insert_before_body_end",
    "is_placeholder",
    "protect",
    "rewrite_html",
    "scan_html",
    "splice",
    "unescape_attribute",
]

# One pass over the text; only the constructs that matter are matched, in priority order.
# Comments first (an MSO conditional block is one comment: links inside are Outlook-only VML and
# are not touched), then raw-text elements whose content is not markup, then the tags we need.
# Every alternative starts with the literal "<" (factored out), so the regex engine jumps from
# one "<" to the next instead of trying the pattern at every position; each alternative is
# told apart by its first character, and comments and raw text are consumed by possessive loops
# (a lazy ".*?" tried the end condition at every character).
# A tag never spans a "<" (not even in a quoted value): unterminated tags then fail fast
# instead of each scanning to the end of the text (quadratic time on hostile input).
_TAG_BODY = r"""(?:[^<>"']++|"[^<"]*+"|'[^<']*+')*+"""
_TOKENS = re.compile(
    r"<(?:!--(?:[^-]++|-(?!->))*+(?:-->)?"  # a comment, to its end (or the end of the text)
    r"|(?=[sStTxXnN])((?:[sS](?:[cC][rR][iI][pP][tT]|[tT][yY][lL][eE])|[tT](?:[eE][xX][tT][aA][rR][eE][aA]|[iI][tT][lL][eE])"
    r"|[xX][mM][pP]|[nN][oO](?:[eE][mM][bB][eE][dD]|[fF][rR][aA][mM][eE][sS])))(?=[\s/>])"  # a raw-text element
    + _TAG_BODY
    + r">(?:[^<]++|<(?!/(?i:\1)\s*>))*+(?:</(?i:\1)\s*>)?"
    r"|([aA])(?=[\s/>])" + _TAG_BODY + r">"  # <a ...>
    r"|/(?=[aAbBhH])([aA]|[bB][oO][dD][yY]|[hH][tT][mM][lL])\s*>)",  # </a>, </body>, </html>
    re.DOTALL,
)
_ATTR = re.compile(r"""([^\s"'>/=]++)(?:\s*+=\s*+("[^"]*+"|'[^']*+'|[^\s>]++))?""")
_URL_JUNK = re.compile(r"[\t\n\r]")  # the WHATWG URL parser drops these anywhere in a URL
_TAGS = re.compile(r"<[^<>]*>")
_PLACEHOLDER = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\*\|[^|]*\|\*|%%[^%]+%%|\[\[[^\]]+\]\]", re.DOTALL)


@dataclass(slots=True)
class Link:
    """One ``<a>`` start tag with an ``href``: offsets into the text it was found in."""

    tag_start: int
    tag_end: int
    value_start: int  # the raw attribute value, quotes excluded
    value_end: int
    quote: str  # '"', "'" or "" (unquoted)
    raw_href: str  # as written (entities not decoded)
    attrs: dict[str, str | None] = field(default_factory=dict)  # lower-case names, decoded values
    text: str = ""  # visible text up to the closing </a>, entities decoded, whitespace collapsed

    @property
    def url(self) -> str:
        """What a browser would request: entities decoded, tabs/newlines dropped, outer spaces stripped."""
        return href_to_url(self.raw_href)


@functools.lru_cache(maxsize=4096)
def href_to_url(raw: str) -> str:
    """The URL an ``href`` attribute value denotes (``&amp;`` -> ``&``; ``%`` escapes untouched).

    Cached: a pure function of the text, asked for each link of each recipient copy of a template."""
    return _URL_JUNK.sub("", unescape_attribute(raw)).strip(" \f")


_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


def unescape_attribute(value: str) -> str:
    """Character references decoded as the HTML5 tokenizer does inside an attribute value.

    Unlike :func:`html.unescape` (the rule for text), a named reference without its ``;``
    (``&reg``, ``&not``, ``&copy``...) is left as written when the next character is ``=`` or
    an ASCII letter or digit: ``?id=1&region=eu`` stays ``&region=eu`` in every browser, and a
    tracked link must lead exactly where the untracked one did.
    """
    if "&" not in value:
        return value
    return _CHARREF.sub(_attribute_charref, value)


def _attribute_charref(m: re.Match[str]) -> str:
    ref = m.group(1)
    if ref[0] == "#" or ref in _html5_entities:
        return _html.unescape(m.group(0))  # numeric references, and complete names, as in text
    for end in range(len(ref) - 1, 1, -1):  # the longest legacy name (no ";") the reference starts with
        if ref[:end] in _html5_entities:
            after = ref[end] if end < len(ref) else m.string[m.end() : m.end() + 1]
            if after == "=" or (after.isascii() and after.isalnum()):
                return m.group(0)  # "for historical reasons": not a reference in an attribute
            return _html5_entities[ref[:end]] + ref[end:]
    return m.group(0)


def is_placeholder(value: str) -> bool:
    """True for template syntax a later merge fills in (``{{ x }}``, ``{% x %}``, ``*|X|*``, ``%%X%%``, ``[[x]]``)."""
    return _PLACEHOLDER.search(value) is not None


class HtmlScan:
    """What one tokenising pass found in a text: its links, and where its last ``</body>`` and ``</html>`` start.

    The pass records where each ``<a>`` tag is and where its text ends; the :class:`Link`
    objects (attributes decoded, visible text) are built on first use of :attr:`links`, so
    inserting the pixel alone never pays for them. Treat a scan (and its links) as read-only:
    scans are remembered and shared between callers that see the same text (every recipient
    copy of one template).
    """

    __slots__ = ("_text", "_anchors", "_links", "_derive", "body_end", "html_end")

    def __init__(
        self,
        text: str,
        anchors: list[tuple[int, int, int]] | None,
        body_end: int | None,
        html_end: int | None,
        derive: Callable[[], tuple[Link, ...]] | None = None,
    ) -> None:
        self._text = text
        self._anchors = anchors  # (tag start, tag end, where its text ends) of each <a> start tag
        self._derive = derive  # or: how to shift an earlier scan's links onto this text
        self._links: tuple[Link, ...] | None = None
        self.body_end = body_end  # offset of the last real </body>
        self.html_end = html_end  # offset of the last real </html>

    @property
    def links(self) -> tuple[Link, ...]:
        """Every ``<a ... href=...>`` outside comments and raw-text elements, in document order."""
        if self._links is None:
            if self._derive is not None:
                self._links, self._derive = self._derive(), None
            else:
                self._links = tuple(_links(self._text, self._anchors or ()))
        return self._links

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HtmlScan):
            return NotImplemented
        return (self.links, self.body_end, self.html_end) == (other.links, other.body_end, other.html_end)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HtmlScan(links={self.links!r}, body_end={self.body_end!r}, html_end={self.html_end!r})"


def _tokenise(text: str) -> HtmlScan:
    """The one tokenising pass over ``text`` (everything else here reuses or shifts its result)."""
    anchors: list[tuple[int, int, int]] = []
    open_at: tuple[int, int] | None = None  # the <a> tag whose text is still running
    body_end: int | None = None
    html_end: int | None = None
    for m in _TOKENS.finditer(text):
        if m.group(2):  # <a ...>
            if open_at is not None:
                anchors.append((*open_at, m.start()))
            open_at = m.span()
            continue
        end_tag = m.group(3)
        if end_tag:  # </a>, </body> and </html> end any open link
            if open_at is not None:
                anchors.append((*open_at, m.start()))
                open_at = None
            name = end_tag.lower()
            if name == "body":
                body_end = m.start()
            elif name == "html":
                html_end = m.start()
    if open_at is not None:
        anchors.append((*open_at, len(text)))
    return HtmlScan(text, anchors, body_end, html_end)


_CACHED_TAG_MAX = 2048  # longer <a> tags (or link texts) are read again, not kept by the caches


def _links(text: str, anchors: Iterable[tuple[int, int, int]]) -> Iterator[Link]:
    """The :class:`Link` of each ``<a>`` tag that has an ``href``, with its visible text."""
    for start, end, text_end in anchors:
        link = _parse_a(text, start, end)
        if link is not None:
            inner = text[end:text_end]
            link.text = _link_text(inner) if len(inner) <= _CACHED_TAG_MAX else _read_link_text(inner)
            yield link


def _read_link_text(inner: str) -> str:
    """What a link shows: tags made blanks, entities decoded, blank runs one space, ends stripped."""
    if "<" in inner:
        inner = _TAGS.sub(" ", inner)
    return " ".join(_html.unescape(inner).split())


_link_text = functools.lru_cache(maxsize=4096)(_read_link_text)  # (a template's links show the same texts)


# Scans remembered per text (least recently used out), bounded by the characters they stand for:
# a campaign's template is scanned once for all its recipient copies, and a text produced by
# :func:`rewrite_html` is entered with its shifted scan, so the next plugin's call is a lookup.
_SCAN_BUDGET = 2_000_000  # characters (plus _ENTRY_COST per entry): a few messages, not a campaign
_REMEMBER_MIN = 1024  # shorter texts are tokenised again: that costs less than remembering them
_ENTRY_COST = 256
_scans: OrderedDict[str, HtmlScan] = OrderedDict()
_scans_size = 0
_scans_lock = threading.Lock()


def _remember(text: str, scan: HtmlScan) -> None:
    """Keep ``scan`` for ``text`` (the next plugin, or the next copy, asks for the same text)."""
    global _scans_size
    cost = len(text) + _ENTRY_COST
    if cost > _SCAN_BUDGET:
        return
    with _scans_lock:
        if text in _scans:
            _scans.move_to_end(text)
            return
        _scans[text] = scan
        _scans_size += cost
        while _scans_size > _SCAN_BUDGET:
            old, _ = _scans.popitem(last=False)
            _scans_size -= len(old) + _ENTRY_COST


def scan_html(text: str) -> HtmlScan:
    """The links and closing tags of ``text``: one tokenising pass per distinct text, then remembered."""
    if len(text) < _REMEMBER_MIN:
        return _tokenise(text)
    with _scans_lock:
        scan = _scans.get(text)
        if scan is not None:
            _scans.move_to_end(text)
            return scan
    scan = _tokenise(text)
    _remember(text, scan)
    return scan


def find_links(text: str) -> list[Link]:
    """Every ``<a ... href=...>`` outside comments and raw-text elements, in document order."""
    return list(scan_html(text).links)


def _parse_a(text: str, tag_start: int, tag_end: int) -> Link | None:
    tag = text[tag_start:tag_end]
    attrs, href = _a_tag(tag) if len(tag) <= _CACHED_TAG_MAX else _read_a_tag(tag)
    if href is None:
        return None
    return Link(tag_start, tag_end, tag_start + href[0], tag_start + href[1], href[2], href[3], dict(attrs))


def _read_a_tag(tag: str) -> tuple[tuple[tuple[str, str | None], ...], tuple[int, int, str, str] | None]:
    """The attributes of one ``<a ...>`` tag (names lower-cased, values decoded, first occurrence
    wins) and its ``href`` (value start and end relative to the tag, quote, raw value), or ``None``.

    Cached by the tag's text (:func:`_a_tag`): a pure function of it, and a template repeats its
    link tags (in one part, and in every message made from it), each a regex pass and a decode
    per attribute. The attributes are copied into each :class:`Link`'s own dict."""
    start = 2  # after "<a"
    body = tag[start:-1]
    attrs: dict[str, str | None] = {}
    href: tuple[int, int, str, str] | None = None
    for am in _ATTR.finditer(body):
        name, raw = am.groups()
        name = name.lower()
        if name in attrs:  # the first occurrence wins, as in browsers
            continue
        if raw is None:
            attrs[name] = None
            continue
        quote = raw[0] if raw[:1] in ("'", '"') else ""
        value = raw[1:-1] if quote else raw
        attrs[name] = unescape_attribute(value)
        if name == "href":
            vstart = start + am.start(2) + (1 if quote else 0)
            href = (vstart, vstart + len(value), quote, value)
    return tuple(attrs.items()), href


_a_tag = functools.lru_cache(maxsize=4096)(_read_a_tag)


def splice(text: str, edits: Iterable[tuple[int, int, str]]) -> str:
    """Replace ``text[start:end]`` by each new string; ranges must not overlap."""
    return _splice_sorted(text, sorted(edits, key=lambda e: e[0]))


def _splice_sorted(text: str, edits: list[tuple[int, int, str]]) -> str:
    """:func:`splice` for edits already in order (rewrite_html sorts them once)."""
    out: list[str] = []
    pos = 0
    for start, end, new in edits:
        if start < pos:
            raise ValueError("overlapping edits")
        out.append(text[pos:start])
        out.append(new)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def body_end_offset(text: str) -> int | None:
    """Offset of the last real ``</body>`` (not inside a comment or raw-text element), else ``None``."""
    return scan_html(text).body_end


def _snippet_offset(text: str, scan: HtmlScan) -> int:
    """Before the last ``</body>``; else before the last ``</html>``; else after the last non-blank character."""
    if scan.body_end is not None:
        return scan.body_end
    if scan.html_end is not None:
        return scan.html_end
    return len(text.rstrip())


def insert_before_body_end(text: str, snippet: str) -> str:
    """Insert ``snippet`` before the last ``</body>``; else before the last ``</html>``; else at the end.

    "At the end" means after the last non-blank character, so a part that ends with a newline
    still does. Inserting before ``</body>`` keeps a preheader (the first thing in ``<body>``)
    first.
    """
    return rewrite_html(text, snippet=snippet)


_ATTR_ESCAPES = {"&": "&amp;", '"': "&quot;", "'": "&#39;", "<": "&lt;", ">": "&gt;"}
_ATTR_SPECIAL = re.compile("[&\"'<>]")


def _attribute_value(url: str) -> str:
    """``url`` written so that an attribute value reads back as exactly ``url`` (and cannot end a tag)."""
    if _ATTR_SPECIAL.search(url) is None:
        return url
    return _ATTR_SPECIAL.sub(lambda m: _ATTR_ESCAPES[m.group(0)], url)


def _inert(snippet: str) -> bool:
    """True when inserting ``snippet`` cannot add or hide a token (so the shifted scan stays exact)."""
    return (
        snippet[:1] == "<" and snippet[-1:] == ">" and "<!" not in snippet and _TOKENS.search(snippet) is None
    )


def rewrite_html(
    text: str,
    *,
    href: Callable[[Link], str | None] | None = None,
    snippet: str | None = None,
) -> str:
    """One tokenising pass: new ``href`` URLs for links, and ``snippet`` before ``</body>``, spliced together.

    ``href(link)`` returns the URL a link should lead to instead (``None``: leave it); it is
    written escaped for an attribute (``&`` as ``&amp;``), so a browser reads exactly that URL,
    in the link's own quotes (an unquoted value gets ``"``). ``snippet`` (e.g. an open pixel) goes
    where :func:`insert_before_body_end` puts it. Nothing else in the text changes. The result's
    scan is derived from this one by shifting offsets and remembered, so a later call on the
    result (the next plugin of the same copy) does not tokenise again.
    """
    scan = scan_html(text)
    edits: list[tuple[int, int, str]] = []
    new_hrefs: dict[int, tuple[str, str]] = {}  # index in scan.links -> (raw value, quote) after its edit
    if href is not None:
        for i, link in enumerate(scan.links):
            url = href(link)
            if url is None:
                continue
            value = _attribute_value(url)
            edits.append((link.value_start, link.value_end, value if link.quote else f'"{value}"'))
            new_hrefs[i] = (value, link.quote or '"')
    insert_at: int | None = None
    if snippet is not None:
        insert_at = _snippet_offset(text, scan)
        edits.append((insert_at, insert_at, snippet))
    if not edits:
        return text
    edits.sort(key=lambda e: e[0])
    out = _splice_sorted(text, edits)
    if len(out) >= _REMEMBER_MIN and (snippet is None or _inert(snippet)):
        _remember(out, _shifted(scan, out, edits, new_hrefs))
    return out


def _shifted(
    scan: HtmlScan, out: str, edits: list[tuple[int, int, str]], new_hrefs: dict[int, tuple[str, str]]
) -> HtmlScan:
    """The scan of the text :func:`splice` made from ``edits`` (sorted), without tokenising it again.

    An edit shifts every offset after its end, and a start offset at its end too (an insertion
    at a closing tag's offset goes before the tag, one at a tag's end after it); a link's own
    href edit also changes its value (``new_hrefs``: index -> raw value, quote).
    """
    ends = [end for _, end, _ in edits]
    cumulative = [0]
    for start, end, new in edits:
        cumulative.append(cumulative[-1] + len(new) - (end - start))

    def moved(pos: int) -> int:  # a start offset: an insertion there goes before it
        return pos + cumulative[bisect.bisect_right(ends, pos)]

    def moved_end(pos: int) -> int:  # an end offset: an insertion there goes after it
        return pos + cumulative[bisect.bisect_left(ends, pos)]

    body_end = None if scan.body_end is None else moved(scan.body_end)
    html_end = None if scan.html_end is None else moved(scan.html_end)
    if (
        scan._links is None and scan._derive is None and not new_hrefs
    ):  # links not built: shift where they are
        anchors = [(moved(s), moved_end(e), moved(t)) for s, e, t in scan._anchors or ()]
        return HtmlScan(out, anchors, body_end, html_end)

    def links() -> tuple[Link, ...]:  # built only if someone asks (the pixel after click tracking does not)
        shifted: list[Link] = []
        for i, link in enumerate(scan.links):
            tag_start, tag_end, value_start = (
                moved(link.tag_start),
                moved_end(link.tag_end),
                moved(link.value_start),
            )
            changed = new_hrefs.get(i)
            if changed is None:
                value_end, quote, raw, attrs = (
                    moved_end(link.value_end),
                    link.quote,
                    link.raw_href,
                    link.attrs,
                )
            else:
                raw, quote = changed
                value_start += 0 if link.quote else 1  # an unquoted value was given quotes
                value_end = value_start + len(raw)
                attrs = {**link.attrs, "href": unescape_attribute(raw)}
            shifted.append(Link(tag_start, tag_end, value_start, value_end, quote, raw, attrs, link.text))
        return tuple(shifted)

    return HtmlScan(out, None, body_end, html_end, links)


_COND_OPEN = re.compile(r"<!--\[if", re.IGNORECASE)


def count_conditional_comments(text: str) -> int:
    """How many ``<!--[if ...]>`` conditional comments the text holds."""
    return len(_COND_OPEN.findall(text))


_STYLESHEET = re.compile(r"<style[\s>]|<link\b[^<>]*\bstylesheet\b", re.IGNORECASE)


def has_stylesheet(text: str) -> bool:
    """True when the HTML has a ``<style>`` element or a stylesheet ``<link>`` (else there is nothing to inline)."""
    return _STYLESHEET.search(text) is not None


def fit_charset(text: str, codec: str) -> str:
    """Characters the part's charset cannot hold become numeric character references (``&#8217;``).

    Used after a tool produced HTML, so a windows-1251 part stays windows-1251 (its ``<meta>``
    says so) instead of being upgraded to UTF-8. Undecodable input bytes (surrogate escapes)
    are kept as they are.
    """
    try:
        text.encode(codec, "surrogateescape")
        return text
    except UnicodeEncodeError:
        pass
    except LookupError:
        return text
    out = []
    for ch in text:
        try:
            ch.encode(codec, "surrogateescape")
            out.append(ch)
        except UnicodeEncodeError:
            out.append(f"&#{ord(ch)};")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Protection for tree round trips
# --------------------------------------------------------------------------------------------

AMP_MARK = "\ue000"  # stands for "&" while a tool parses the HTML
_TOKEN_PREFIX = "smtpgate-keep-"  # + a random part per process and a number per document:
_MARKER_SEED = secrets.token_hex(4)  # message text cannot guess it, so cannot collide with a token
_documents = itertools.count()
_URL_ATTRS = ("href", "src", "action", "background", "cite", "longdesc", "usemap", "poster", "data")
_URL_ATTR_NAMES = "|".join(_URL_ATTRS)
# What protect() changes in a tag: of its attributes (``name = value``, quoted or not), read left
# to right, only two kinds are changed: a URL attribute (its value becomes a token) and, when "&" is
# being marked, another attribute but ``style`` whose value holds an "&". One match runs from
# where the last one ended over the attributes left as they are (each taken whole, so a name in
# a quoted value is never mistaken for an attribute) up to the next changed one, or to the tag's
# end: Python sees the changed attributes only, not every attribute of the tag.
# (A name "is" a URL attribute when its lower case is one: ASCII letters of either case, and
# the Kelvin sign, the one other character whose lower case is an ASCII letter.)
_ATTR_VALUE = r"""(?:"[^"]*+"|'[^']*+'|[^\s>"']++)"""
_URL_ATTR_NAME = (
    "(?:"
    + "|".join(
        "".join("[kK\u212a]" if c == "k" else f"[{c}{c.upper()}]" for c in name) for name in _URL_ATTRS
    )
    + ")"
)
_URL_ATTR = r"\s" + _URL_ATTR_NAME + r"\s*+=\s*+(?P<url>" + _ATTR_VALUE + ")"
_AMP_ATTR = (
    r"""\s(?![sS][tT][yY][lL][eE](?![^\s"'>/=]))[^\s"'>/=]++\s*+=\s*+"""
    r"""(?P<amp>"[^"&]*+&[^"]*+"|'[^'&]*+&[^']*+'|[^\s>"'&]*+&[^\s>"']*+)"""
)
_ANY_ATTR = r"""\s[^\s"'>/=]++\s*+=\s*+""" + _ATTR_VALUE


def _next_change(changed: str) -> re.Pattern[str]:
    unchanged = r"(?:[^\s]++|(?!" + re.sub(r"\(\?P<\w+>", "(?:", changed) + ")(?:" + _ANY_ATTR + r"|\s))*+"
    return re.compile(unchanged + r"(?:" + changed + ")?")


_NEXT_URL = _next_change(_URL_ATTR)  # when "&" is not marked (the text already holds AMP_MARK)
_NEXT_URL_OR_AMP = _next_change(_URL_ATTR + "|" + _AMP_ATTR)
# The tags protect() must look at one by one: start tags holding a URL attribute or an "&" (outside
# ``style`` it is marked, inside it is left for the CSS parser). They are found from literal
# searches (each "&" with str.find, the URL attribute names with one literal-prefix regex over a
# reversed lower-cased copy), never by trying a pattern at every tag; every other tag stays in the plain
# text between them, where "&" is replaced by one str.replace.
# (The tag body is written unrolled: a run of plain characters, then quoted values each followed
# by a run. The same language as ``_TAG_BODY``, matched the same way, in a fifth fewer steps.)
_START_TAG = re.compile(r"""<[A-Za-z][^\s/<>]*+[^<>"']*+(?:"[^<"]*+"[^<>"']*+|'[^<']*+'[^<>"']*+)*+>""")
# Where a URL attribute is named: ``name\s*=`` after a blank. Searched in the reversed lower-case
# text, where each starts with the literal "=": the regex engine skips from one "=" to the next
# (one pass for the nine names; nine literal passes over the text cost twice as much, and an
# alternation after a blank, tried at every blank, four times as much).
_URL_NAMES_REVERSED = re.compile(r"=\s*+(?:" + "|".join(name[::-1] for name in _URL_ATTRS) + r")(?=\s)")
# The same set, for the rare text whose lower-case copy has another length (offsets would not match).
_NEEDS_WORK = re.compile(
    r"<[A-Za-z][^\s/<>]*+(?=[^<>]*?(?:&|\s(?:" + _URL_ATTR_NAMES + r")\s*+=))" + _TAG_BODY + r">",
    re.IGNORECASE,
)
_DOC_OPEN = re.compile(r"<(?:!--.*?(?:-->|\Z)|(html|head|body)(?=[\s/>]))", re.IGNORECASE | re.DOTALL)
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes the part's charset could not decode
_SURROGATE_STANDIN = re.compile("[\uf780-\uf7ff]")  # private-use stand-ins while a tool parses
_HTML_CLOSE = re.compile(r"</html\s*>", re.IGNORECASE)
_COMMENT_OR_SPACE = re.compile(r"\A(?:\s++|<!--.*?-->)*+\Z", re.DOTALL)
_DIGITS = re.compile(r"\d+")


@dataclass
class Protected:
    """HTML made safe for a parser round trip, and how to undo it (:meth:`restore`)."""

    text: str
    prefix: str  # everything before <html ...> (doctype, comments), put back verbatim
    suffix: str  # whitespace/comments after </html>, put back verbatim
    fragment: bool  # no <html>, <head> or <body> tag: only the content is put back, unwrapped
    kept: dict[str, str]  # token -> the attribute value as written (with its quotes, if it had any)
    amp: bool  # whether "&" was replaced by AMP_MARK
    surrogates: bool = False  # whether undecodable bytes were swapped for private-use stand-ins
    marker: str = ""  # the literal prefix of this document's tokens

    def restore(self, out: str) -> str:
        """Undo the protection on a tool's output (tokens found by their literal prefix, not a regex per position)."""
        if self.amp:  # first: the marker made the text two bytes a character, the token pass reads one
            out = out.replace(AMP_MARK, "&")  # (the kept values hold no AMP_MARK when amp is set)
        if self.kept:
            out = self._restore_tokens(out)
        if self.surrogates:
            out = _SURROGATE_STANDIN.sub(lambda m: chr(ord(m.group(0)) - 0xF780 + 0xDC80), out)
        return self.prefix + out + self.suffix

    def _restore_tokens(self, out: str) -> str:
        """Each of this document's tokens back to its value; a quoted token gets the value in its original quotes."""
        marker = self.marker
        parts: list[str] = []
        pos = 0
        at = out.find(marker)
        while at >= 0:
            digits = _DIGITS.match(out, at + len(marker))
            token_end = digits.end() if digits else at + len(marker)
            original = self.kept.get(out[at:token_end])
            if original is None:  # not one of ours (or mangled): left as it is
                at = out.find(marker, token_end)
                continue
            start, end = at, token_end
            quote = out[at - 1 : at] if at > 0 else ""
            if quote in ('"', "'") and out[token_end : token_end + 1] == quote:
                start, end = at - 1, token_end + 1  # the tool's quotes give way to the original's
                if original[:1] not in ('"', "'"):
                    original = f'"{original}"'
            parts.append(out[pos:start])
            parts.append(original)
            pos = end
            at = out.find(marker, pos)
        parts.append(out[pos:])
        return "".join(parts)


def protect(text: str) -> Protected:
    """Prepare HTML for a parser round trip (see the module docstring)."""
    prefix, suffix, body, fragment = "", "", text, True
    m = next((d for d in _DOC_OPEN.finditer(text) if d.group(1)), None)
    if m is not None:
        fragment = False  # a document (lxml adds <html> around a lone <head>/<body>)
        if _COMMENT_OR_SPACE.match(_strip_decls(text[: m.start()])):
            prefix, body = text[: m.start()], text[m.start() :]
        last_end = _last_html_close(body)
        if last_end is not None:
            tail = body[last_end.end() :]
            if _COMMENT_OR_SPACE.match(tail):
                suffix, body = tail, body[: last_end.end()]
    surrogates = False
    if _has_surrogates(body) and not _SURROGATE_STANDIN.search(body):
        body = _SURROGATE.sub(lambda s: chr(ord(s.group(0)) - 0xDC80 + 0xF780), body)
        surrogates = True
    amp = AMP_MARK not in body
    kept: dict[str, str] = {}
    marker = f"{_TOKEN_PREFIX}{_MARKER_SEED}{next(_documents):x}-"
    next_change = (_NEXT_URL_OR_AMP if amp else _NEXT_URL).match
    out: list[str] = []
    pos = 0
    for start, end in _tags_needing_work(body):
        chunk = body[pos:start]
        out.append(chunk.replace("&", AMP_MARK) if amp else chunk)
        pos = start
        while True:  # each changed attribute of the tag (the text between them is copied as it is)
            m = cast("re.Match[str]", next_change(body, pos, end))  # (never None: it can match nothing)
            at = m.start("url")
            if at >= 0:
                val = m.group("url")
                token = f"{marker}{len(kept)}"
                kept[token] = val
                quote = val[0] if val[0] in ("'", '"') else ""  # (a value is never empty)
                out.append(body[pos:at])
                out.append(f"{quote}{token}{quote}")
            elif amp and (at := m.start("amp")) >= 0:
                out.append(body[pos:at])
                out.append(m.group("amp").replace("&", AMP_MARK))
            else:
                break
            pos = m.end()
        out.append(body[pos:end])
        pos = end
    rest = body[pos:]
    out.append(rest.replace("&", AMP_MARK) if amp else rest)
    return Protected("".join(out), prefix, suffix, fragment, kept, amp, surrogates, marker)


def _last_html_close(body: str) -> re.Match[str] | None:
    """The last ``</html>`` of ``body`` (any case, blanks before ``>``), or ``None``.

    Looked for backwards from the end, where it nearly always is (a few ``</`` tried); only when
    it is not there is the rest of the text scanned (a case-insensitive regex over 50 KB cost
    a tenth of protect())."""
    at = len(body)
    for _ in range(8):
        at = body.rfind("</", 0, at)
        if at < 0:
            return None
        found = _HTML_CLOSE.match(body, at)
        if found is not None:
            return found
    last = None
    for found in _HTML_CLOSE.finditer(body, 0, at):  # (a match ends before the "</" at ``at``)
        last = found
    return last


def _tags_needing_work(body: str) -> list[tuple[int, int]]:
    """Start and end of each start tag holding an ``&`` or a URL attribute, in order.

    Linear: the candidates come from literal searches, each stretch of text between two
    candidates is searched backwards for a ``<`` once, and each tag is matched once."""
    low = body.lower()
    if len(low) != len(body):  # a character whose lower case is longer (U+0130): match case-insensitively
        return [m.span() for m in _NEEDS_WORK.finditer(body)]
    candidates: list[int] = []
    find, rfind, start_tag = body.find, body.rfind, _START_TAG.match  # (bound once: the loops below are hot)
    at = find("&")
    while at >= 0:
        candidates.append(at)
        at = find("&", at + 1)
    if "=" in body:
        end = len(low)  # a match's end in the reversed text is where the name starts, counted from the end
        candidates.extend([end - m.end() for m in _URL_NAMES_REVERSED.finditer(low[::-1])])
    candidates.sort()
    tags: list[tuple[int, int]] = []
    seen: dict[str, int] = {}  # text from a "<" to a candidate -> where its tag ended, when before it
    last_lt = -1  # the last "<" before the candidate
    searched = 0  # text before this offset has been searched for "<"
    tag_end = 0
    # The last "<" matched as a start tag, and where that tag ends (-1: it is none).
    matched_lt, matched_end = -1, -1
    for at in candidates:
        if at < tag_end:  # in the tag just taken
            continue
        lt = rfind("<", searched, at)
        searched = at
        if lt >= 0:
            last_lt = lt
        if last_lt < tag_end:  # no "<" since the last tag taken: text
            continue
        if last_lt != matched_lt:  # each "<" is matched at most once
            matched_lt = last_lt
            # (a template repeats its tags: the same text before an "&", the same match; a URL
            # attribute's name is nearly always in its tag, and is matched directly)
            before = body[last_lt:at] if body[at] == "&" else ""
            ended = seen.get(before) if before else None
            if ended is not None:
                matched_end = last_lt + ended
            else:
                m = start_tag(body, last_lt)
                matched_end = m.end() if m is not None else -1
                if before and 0 <= matched_end <= at:  # (a match ended within ``before``: its text alone)
                    seen[before] = matched_end - last_lt
        if matched_end > at:
            tags.append((last_lt, matched_end))
            tag_end = matched_end
    return tags


_DECLS = re.compile(r"<![Dd][Oo][Cc][Tt][Yy][Pp][Ee][^<>]*+>|<\?[^<>]*+>|\ufeff")


def _has_surrogates(text: str) -> bool:
    """Whether ``text`` holds undecodable bytes (lone surrogates): one C-level encode, not a regex per character."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _strip_decls(head: str) -> str:
    """``<!DOCTYPE ...>`` and ``<?xml ...?>`` removed, to check what else precedes ``<html>``."""
    return _DECLS.sub("", head) if head else head


# --------------------------------------------------------------------------------------------
# lxml round trip
# --------------------------------------------------------------------------------------------


_parsers = threading.local()


def _html_parser() -> etree.HTMLParser:
    """This thread's lxml HTML parser: building one per part cost as much as parsing a small part."""
    parser: etree.HTMLParser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.HTMLParser(
            remove_comments=False, remove_pis=False, no_network=True, default_doctype=False
        )
        _parsers.parser = parser
    return parser


class HtmlDocument:
    """An HTML part parsed once with lxml (after :func:`protect`), to be changed and serialised once."""

    def __init__(self, text: str) -> None:
        self.protected = protect(text)
        parser = _html_parser()
        root = etree.fromstring(self.protected.text or "<html></html>", parser)
        if root is None:  # only whitespace or comments
            root = etree.fromstring("<html><body></body></html>", parser)
        self.root: etree._Element = root

    def serialise(self) -> str:
        """The document as text, protection undone (doctype and text around ``<html>`` verbatim)."""
        if self.protected.fragment:
            out = self._fragment_content()
        else:
            out = etree.tostring(self.root, method="html", encoding="unicode", with_tail=False)
        return self.protected.restore(out)

    def _fragment_content(self) -> str:
        """For input without ``<html>``: what lxml put in ``<head>`` (e.g. kept ``<style>``) then the body content."""
        parts: list[str] = []
        for section in self.root:
            if not isinstance(section.tag, str):
                parts.append(etree.tostring(section, method="html", encoding="unicode"))
                continue
            if section.text:
                parts.append(_html.escape(section.text, quote=False))
            parts.extend(etree.tostring(child, method="html", encoding="unicode") for child in section)
        return "".join(parts)

    def apply(self, func: Callable[[etree._Element], object]) -> None:
        """Let a tool change the tree in place (e.g. ``Premailer(...).transform``)."""
        func(self.root)
