"""The straightforward computations the fast paths of the HTML layer and the MIME encoder must equal.

Each is the code as it was before a speed-up (or the definition it implements, written the plain
way); tests/test_html_fast_paths.py compares the fast paths with them on generated inputs and on
every HTML part of every message in samples/ and the shared corpus.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.toolkit import html as H

# protect()'s attribute pass before it handed only changed attributes to Python: every attribute
_ATTR_IN_TAG = re.compile(
    r"""(?P<lead>\s)(?P<name>[^\s"'>/=]++)(?P<eq>\s*+=\s*+)(?P<val>"[^"]*+"|'[^']*+'|[^\s>"']++)"""
)
_URL_NAMES = tuple(re.compile(name + r"(?=\s*+=)") for name in H._URL_ATTRS)
_URL_NAMES_SHORT = re.compile(r"\s(?:" + H._URL_ATTR_NAMES + r")(?=\s*+=)")
_SHORT = 4096
_HTML_CLOSE = re.compile(r"</html\s*>", re.IGNORECASE)


def tags_needing_work(body: str) -> list[tuple[int, int]]:
    """``_tags_needing_work`` before the one-pass name search: nine literal passes (or, below 4096
    characters, an alternation after a blank) over the lower-cased text."""
    low = body.lower()
    if len(low) != len(body):
        return [m.span() for m in H._NEEDS_WORK.finditer(body)]
    candidates: list[int] = []
    at = body.find("&")
    while at >= 0:
        candidates.append(at)
        at = body.find("&", at + 1)
    if len(low) < _SHORT:
        candidates.extend(m.start() + 1 for m in _URL_NAMES_SHORT.finditer(low))
    else:
        for name in _URL_NAMES:
            candidates.extend(
                m.start() for m in name.finditer(low) if m.start() and low[m.start() - 1].isspace()
            )
    candidates.sort()
    tags: list[tuple[int, int]] = []
    last_lt, searched, tag_end = -1, 0, 0
    matched_lt, matched_end = -1, -1
    for at in candidates:
        if at < tag_end:
            continue
        lt = body.rfind("<", searched, at)
        searched = at
        if lt >= 0:
            last_lt = lt
        if last_lt < tag_end:
            continue
        if last_lt != matched_lt:
            m = H._START_TAG.match(body, last_lt)
            matched_lt, matched_end = last_lt, (m.end() if m is not None else -1)
        if matched_end > at:
            tags.append((last_lt, matched_end))
            tag_end = matched_end
    return tags


_NAME_AT = re.compile(r"(?<=\s)(?:" + H._URL_ATTR_NAMES + r")(?=\s*+=)", re.IGNORECASE)


def tags_needing_work_by_definition(body: str) -> list[tuple[int, int]]:
    """The same set by its definition, one ``<`` at a time: each start tag (``_START_TAG`` at a
    ``<``) that holds an ``&`` or a URL attribute name after a blank and before ``=``."""
    if len(body.lower()) != len(body):
        return [m.span() for m in H._NEEDS_WORK.finditer(body)]
    tags = []
    for lt in (i for i, ch in enumerate(body) if ch == "<"):
        m = H._START_TAG.match(body, lt)
        if m is None:
            continue
        inner = body[lt : m.end()]
        low = inner.lower()
        if "&" in inner or any(_NAME_AT.match(low, i) for i in range(1, len(low))):
            tags.append(m.span())
    return tags


def protect(text: str, marker: str) -> H.Protected:
    """``protect`` before the speed-ups (regexes over the whole text, the reference tag search),
    with the given token marker (each real call draws a new one)."""
    prefix, suffix, body, fragment = "", "", text, True
    m = next((d for d in H._DOC_OPEN.finditer(text) if d.group(1)), None)
    if m is not None:
        fragment = False
        if H._COMMENT_OR_SPACE.match(H._strip_decls(text[: m.start()])):
            prefix, body = text[: m.start()], text[m.start() :]
        last_end = None
        for close in _HTML_CLOSE.finditer(body):
            last_end = close
        if last_end is not None:
            tail = body[last_end.end() :]
            if H._COMMENT_OR_SPACE.match(tail):
                suffix, body = tail, body[: last_end.end()]
    surrogates = False
    if H._has_surrogates(body) and not H._SURROGATE_STANDIN.search(body):
        body = H._SURROGATE.sub(lambda s: chr(ord(s.group(0)) - 0xDC80 + 0xF780), body)
        surrogates = True
    amp = H.AMP_MARK not in body
    kept: dict[str, str] = {}

    def attr(am: re.Match[str]) -> str:
        name, val = am.group("name"), am.group("val")
        lname = name.lower()
        if "&" not in val and lname not in H._URL_ATTRS:
            return am.group(0)
        if lname in H._URL_ATTRS:
            token = f"{marker}{len(kept)}"
            kept[token] = val
            quote = val[0] if val[:1] in ("'", '"') else ""
            return f"{am.group('lead')}{name}{am.group('eq')}{quote}{token}{quote}"
        if amp and lname != "style":
            val = val.replace("&", H.AMP_MARK)
        return f"{am.group('lead')}{name}{am.group('eq')}{val}"

    out: list[str] = []
    pos = 0
    for start, end in tags_needing_work(body):
        chunk = body[pos:start]
        out.append(chunk.replace("&", H.AMP_MARK) if amp else chunk)
        out.append(_ATTR_IN_TAG.sub(attr, body[start:end]))
        pos = end
    rest = body[pos:]
    out.append(rest.replace("&", H.AMP_MARK) if amp else rest)
    return H.Protected("".join(out), prefix, suffix, fragment, kept, amp, surrogates, marker)


_DIGITS = re.compile(r"\d+")


def restore(prot: H.Protected, out: str) -> str:
    """``Protected.restore`` before the speed-ups: tokens by their literal prefix, then one
    ``str.replace`` for the ``&`` marker and a regex for the surrogate stand-ins."""
    if prot.kept:
        marker = prot.marker
        parts: list[str] = []
        pos = 0
        at = out.find(marker)
        while at >= 0:
            digits = _DIGITS.match(out, at + len(marker))
            token_end = digits.end() if digits else at + len(marker)
            original = prot.kept.get(out[at:token_end])
            if original is None:
                at = out.find(marker, token_end)
                continue
            start, end = at, token_end
            quote = out[at - 1 : at] if at > 0 else ""
            if quote in ('"', "'") and out[token_end : token_end + 1] == quote:
                start, end = at - 1, token_end + 1
                if original[:1] not in ('"', "'"):
                    original = f'"{original}"'
            parts.append(out[pos:start])
            parts.append(original)
            pos = end
            at = out.find(marker, pos)
        parts.append(out[pos:])
        out = "".join(parts)
    if prot.amp:
        out = out.replace(H.AMP_MARK, "&")
    if prot.surrogates:
        out = H._SURROGATE_STANDIN.sub(lambda m: chr(ord(m.group(0)) - 0xF780 + 0xDC80), out)
    return prot.prefix + out + prot.suffix


_TAGS = re.compile(r"<[^<>]*>")
_SPACES = re.compile(r"\s+")


def link_texts(text: str) -> list[tuple[int, int, str]]:
    """(tag start, value start, visible text) of each link, computed as ``_links`` did before:
    every tag made a blank by a regex, entities decoded, blank runs collapsed by a regex."""
    import html as _html

    found = []
    for start, end, text_end in H._tokenise(text)._anchors or ():
        link = H._parse_a(text, start, end)
        if link is not None:
            inner = _TAGS.sub(" ", text[end:text_end])
            found.append((link.tag_start, link.value_start, _SPACES.sub(" ", _html.unescape(inner)).strip()))
    return found


def last_html_close(body: str) -> tuple[int, int] | None:
    """The span of the last ``</html>`` match of a regex over the whole text."""
    spans = [m.span() for m in _HTML_CLOSE.finditer(body)]
    return spans[-1] if spans else None


def parse_a_before(text: str, tag_start: int, tag_end: int) -> H.Link | None:
    """``_parse_a`` before its per-tag cache: the tag's attributes read from the text each time."""
    start = tag_start + 2  # after "<a"
    body = text[start : tag_end - 1]
    attrs: dict[str, str | None] = {}
    href: tuple[int, int, str, str] | None = None
    for am in H._ATTR.finditer(body):
        name, raw = am.groups()
        name = name.lower()
        if name in attrs:
            continue
        if raw is None:
            attrs[name] = None
            continue
        quote = raw[0] if raw[:1] in ("'", '"') else ""
        value = raw[1:-1] if quote else raw
        attrs[name] = H.unescape_attribute(value)
        if name == "href":
            vstart = start + am.start(2) + (1 if quote else 0)
            href = (vstart, vstart + len(value), quote, value)
    if href is None:
        return None
    return H.Link(tag_start, tag_end, href[0], href[1], href[2], href[3], attrs)


# -- helpers for the tests that compare the fast paths with the computations above ---------------


def same_protection(got: H.Protected, want: H.Protected) -> None:
    """Two protections are the same: text, the parts put back verbatim, the kept values, the flags."""
    assert got.text == want.text
    assert (got.prefix, got.suffix, got.fragment, got.kept, got.amp, got.surrogates) == (
        want.prefix,
        want.suffix,
        want.fragment,
        want.kept,
        want.amp,
        want.surrogates,
    )


def protects_as_reference(text: str) -> None:
    """``protect(text)`` equals :func:`protect` above (with the fast path's own marker)."""
    got = H.protect(text)
    same_protection(got, protect(text, got.marker))


def count_start_tag_matches(monkeypatch: Any) -> list[int]:
    """Where ``_START_TAG`` is tried from now on (``monkeypatch``'s life): the offsets, in order."""
    matched: list[int] = []
    real = H._START_TAG

    class CountingPattern:
        def match(self, text: str, pos: int) -> re.Match[str] | None:
            matched.append(pos)
            return real.match(text, pos)

    monkeypatch.setattr(H, "_START_TAG", CountingPattern())
    return matched
