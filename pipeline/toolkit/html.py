"""HTML helpers for plugins that edit email HTML: find links, insert a snippet, round-trip a document.

Email HTML is not web HTML: Outlook reads ``<!--[if mso]>`` comments, senders leave ``{{ }}``
placeholders for a later merge, lower-case ``<!doctype html>`` and entities must survive, and
a changed byte in a URL breaks a link. So there are two ways to edit here:

* **Splicing** (:func:`find_links`, :func:`splice`, :func:`insert_before_body_end`): a fast
  tokenizer finds the exact character offsets of ``<a href>`` values and of ``</body>``
  outside comments, ``<script>``/``<style>`` and other raw-text elements; the caller replaces
  just those ranges, so every other character of the part stays identical. Click tracking and
  the open pixel use this.
* **A document round trip** (:class:`HtmlDocument`): parse once with lxml, let a tool change the
  tree (premailer inlines CSS), serialise once. Before parsing, the text is *protected*: every
  ``&`` outside ``style`` attributes becomes a private-use marker (so entities come back
  exactly as written, ``&nbsp;`` stays ``&nbsp;``), URL attribute values (``href``, ``src``,
  ...) are replaced by opaque tokens (libxml2 would percent-escape spaces and non-ASCII in
  them, and ``{{ url }}`` with them), and the text before ``<html>`` (doctype, comments) and
  after ``</html>`` is cut off and put back verbatim. lxml still normalises attribute quoting
  to ``"`` and void tags to ``<br>``: a tree round trip cannot promise more.
"""

from __future__ import annotations

import functools
import html as _html
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.entities import html5 as _html5_entities

from lxml import etree

__all__ = [
    "HtmlDocument",
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
    "splice",
    "unescape_attribute",
]

# One pass over the text; only the constructs that matter are matched, in priority order.
# Comments first (an MSO conditional block is one comment: links inside are Outlook-only VML and
# are not touched), then raw-text elements whose content is not markup, then the tags we need.
# A tag never spans a "<" (not even in a quoted value): unterminated tags then fail fast
# instead of each scanning to the end of the text (quadratic time on hostile input).
_TAG_BODY = r"""(?:[^<>"']++|"[^<"]*+"|'[^<']*+')*+"""
_TOKENS = re.compile(
    r"<!--.*?(?:-->|\Z)"
    r"|<(script|style|textarea|title|xmp|noembed|noframes)(?=[\s/>])" + _TAG_BODY + r">.*?(?:</\1\s*>|\Z)"
    r"|<(a)(?=[\s/>])" + _TAG_BODY + r">"
    r"|</(a|body|html)\s*>",
    re.IGNORECASE | re.DOTALL,
)
_ATTR = re.compile(r"""([^\s"'>/=]++)(?:\s*+=\s*+("[^"]*+"|'[^']*+'|[^\s>]++))?""")
_URL_JUNK = re.compile(r"[\t\n\r]")  # the WHATWG URL parser drops these anywhere in a URL
_TAGS = re.compile(r"<[^<>]*>")
_SPACES = re.compile(r"\s+")
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


def _tokens(text: str) -> Iterable[re.Match[str]]:
    return _TOKENS.finditer(text)


def find_links(text: str) -> list[Link]:
    """Every ``<a ... href=...>`` outside comments and raw-text elements, in document order."""
    links: list[Link] = []
    open_link: Link | None = None
    text_from = 0

    def close(at: int) -> None:
        nonlocal open_link
        if open_link is not None:
            inner = _TAGS.sub(" ", text[text_from:at])
            open_link.text = _SPACES.sub(" ", _html.unescape(inner)).strip()
            open_link = None

    for m in _tokens(text):
        if m.group(2):  # <a ...>
            close(m.start())
            link = _parse_a(text, m)
            if link is not None:
                links.append(link)
                open_link = link
                text_from = m.end()
        elif m.group(3) and m.group(3).lower() == "a":
            close(m.start())
        elif m.group(3):  # </body> or </html> end any open link
            close(m.start())
    close(len(text))
    return links


def _parse_a(text: str, m: re.Match[str]) -> Link | None:
    start = m.start() + 2  # after "<a"
    body = text[start : m.end() - 1]
    attrs: dict[str, str | None] = {}
    href: tuple[int, int, str, str] | None = None
    for am in _ATTR.finditer(body):
        name = am.group(1).lower()
        raw = am.group(2)
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
    if href is None:
        return None
    return Link(m.start(), m.end(), href[0], href[1], href[2], href[3], attrs)


def splice(text: str, edits: Iterable[tuple[int, int, str]]) -> str:
    """Replace ``text[start:end]`` by each new string; ranges must not overlap."""
    out: list[str] = []
    pos = 0
    for start, end, new in sorted(edits, key=lambda e: e[0]):
        if start < pos:
            raise ValueError("overlapping edits")
        out.append(text[pos:start])
        out.append(new)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def body_end_offset(text: str) -> int | None:
    """Offset of the last real ``</body>`` (not inside a comment or raw-text element), else ``None``."""
    last = None
    for m in _tokens(text):
        if m.group(3) and m.group(3).lower() == "body":
            last = m.start()
    return last


def insert_before_body_end(text: str, snippet: str) -> str:
    """Insert ``snippet`` before the last ``</body>``; else before the last ``</html>``; else at the end.

    "At the end" means after the last non-blank character, so a part that ends with a newline
    still does. Inserting before ``</body>`` keeps a preheader (the first thing in ``<body>``)
    first.
    """
    body_at: int | None = None
    html_at: int | None = None
    for m in _tokens(text):
        tag = (m.group(3) or "").lower()
        if tag == "body":
            body_at = m.start()
        elif tag == "html":
            html_at = m.start()
    at = body_at if body_at is not None else html_at
    if at is None:
        at = len(text.rstrip())
    return text[:at] + snippet + text[at:]


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
_TOKEN_PREFIX = "smtpgate-keep-"  # + a random part per document, so message text cannot collide
# Any document's token (compiled once); restore() only replaces tokens of its own document.
_KEPT_TOKEN = re.compile(r"""(["']?)(""" + re.escape(_TOKEN_PREFIX) + r"""[0-9a-f]{8}-\d+)\1""")
_URL_ATTRS = ("href", "src", "action", "background", "cite", "longdesc", "usemap", "poster", "data")
_ATTR_IN_TAG = re.compile(
    r"""(?P<lead>\s)(?P<name>[^\s"'>/=]++)(?P<eq>\s*+=\s*+)(?P<val>"[^"]*+"|'[^']*+'|[^\s>"']++)"""
)
_URL_ATTR_HINT = re.compile(r"\s(?:" + "|".join(_URL_ATTRS) + r")\s*=", re.IGNORECASE)
"""Could the tag hold a URL attribute? (A superset: a match in a quoted value only costs time.)"""
_START_TAG = re.compile(r"<[A-Za-z][^\s/<>]*+" + _TAG_BODY + r">")
_DOC_OPEN = re.compile(r"<!--.*?(?:-->|\Z)|<(html|head|body)(?=[\s/>])", re.IGNORECASE | re.DOTALL)
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes the part's charset could not decode
_SURROGATE_STANDIN = re.compile("[\uf780-\uf7ff]")  # private-use stand-ins while a tool parses
_HTML_CLOSE = re.compile(r"</html\s*>", re.IGNORECASE)
_COMMENT_OR_SPACE = re.compile(r"\A(?:\s++|<!--.*?-->)*+\Z", re.DOTALL)


@dataclass
class Protected:
    """HTML made safe for a parser round trip, and how to undo it (:meth:`restore`)."""

    text: str
    prefix: str  # everything before <html ...> (doctype, comments), put back verbatim
    suffix: str  # whitespace/comments after </html>, put back verbatim
    fragment: bool  # no <html>, <head> or <body> tag: only the content is put back, unwrapped
    kept: dict[str, str]  # token -> original quoted attribute value
    amp: bool  # whether "&" was replaced by AMP_MARK
    surrogates: bool = False  # whether undecodable bytes were swapped for private-use stand-ins

    def restore(self, out: str) -> str:
        """Undo the protection on a tool's output."""
        if self.kept:
            out = _KEPT_TOKEN.sub(lambda m: self.kept.get(m.group(2), m.group(0)), out)
        if self.amp:
            out = out.replace(AMP_MARK, "&")
        if self.surrogates:
            out = _SURROGATE_STANDIN.sub(lambda m: chr(ord(m.group(0)) - 0xF780 + 0xDC80), out)
        return self.prefix + out + self.suffix


def protect(text: str) -> Protected:
    """Prepare HTML for a parser round trip (see the module docstring)."""
    prefix, suffix, body, fragment = "", "", text, True
    m = next((d for d in _DOC_OPEN.finditer(text) if d.group(1)), None)
    if m is not None:
        fragment = False  # a document (lxml adds <html> around a lone <head>/<body>)
        if _COMMENT_OR_SPACE.match(_strip_decls(text[: m.start()])):
            prefix, body = text[: m.start()], text[m.start() :]
        ends = list(_HTML_CLOSE.finditer(body))
        if ends:
            tail = body[ends[-1].end() :]
            if _COMMENT_OR_SPACE.match(tail):
                suffix, body = tail, body[: ends[-1].end()]
    surrogates = False
    if _SURROGATE.search(body) and not _SURROGATE_STANDIN.search(body):
        body = _SURROGATE.sub(lambda s: chr(ord(s.group(0)) - 0xDC80 + 0xF780), body)
        surrogates = True
    amp = AMP_MARK not in body
    kept: dict[str, str] = {}
    token_prefix = f"{_TOKEN_PREFIX}{secrets.token_hex(4)}-"

    def attr(am: re.Match[str]) -> str:
        name, val = am.group("name"), am.group("val")
        lname = name.lower()
        if lname in _URL_ATTRS:
            token = f"{token_prefix}{len(kept)}"
            kept[token] = val if val[:1] in ("'", '"') else f'"{val}"'
            return f'{am.group("lead")}{name}{am.group("eq")}"{token}"'
        if amp and lname != "style":
            val = val.replace("&", AMP_MARK)
        return f"{am.group('lead')}{name}{am.group('eq')}{val}"

    def tag(tm: re.Match[str]) -> str:
        text = tm.group(0)
        # Most tags have neither a URL attribute nor an "&": ``attr`` would give every attribute
        # back as written, so skip its per-attribute calls (non-ASCII tags always take them).
        if (not amp or "&" not in text) and text.isascii() and not _URL_ATTR_HINT.search(text):
            return text
        return _ATTR_IN_TAG.sub(attr, text)

    out: list[str] = []
    pos = 0
    for tm in _START_OR_SKIP.finditer(body):
        chunk = body[pos : tm.start()]
        out.append(chunk.replace("&", AMP_MARK) if amp else chunk)
        out.append(tag(tm) if tm.group(0)[1:2].isalpha() else tm.group(0))
        pos = tm.end()
    rest = body[pos:]
    out.append(rest.replace("&", AMP_MARK) if amp else rest)
    return Protected("".join(out), prefix, suffix, fragment, kept, amp, surrogates)


_START_OR_SKIP = re.compile(r"<!--.*?(?:-->|\Z)|<![^<>]*>|</[^<>]*>|" + _START_TAG.pattern, re.DOTALL)


def _strip_decls(head: str) -> str:
    """``<!DOCTYPE ...>`` and ``<?xml ...?>`` removed, to check what else precedes ``<html>``."""
    return re.sub(r"<![Dd][Oo][Cc][Tt][Yy][Pp][Ee][^<>]*+>|<\?[^<>]*+>|\ufeff", "", head)


# --------------------------------------------------------------------------------------------
# lxml round trip
# --------------------------------------------------------------------------------------------


class HtmlDocument:
    """An HTML part parsed once with lxml (after :func:`protect`), to be changed and serialised once."""

    def __init__(self, text: str) -> None:
        self.protected = protect(text)
        parser = etree.HTMLParser(remove_comments=False, remove_pis=False, no_network=True, default_doctype=False)
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
