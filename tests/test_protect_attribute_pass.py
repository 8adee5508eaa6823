"""protect()'s attribute pass (only changed attributes reach Python), its unrolled start-tag
pattern and its per-document reuse of tag matches give exactly what the reference gave.

The reference (tests/support/html_reference.py) runs ``_ATTR_IN_TAG.sub`` with a callback on
every attribute of every tag needing work and matches every candidate's tag.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.toolkit import html as H
from tests.support import html_part_texts
from tests.support import html_reference as ref

PARTS = html_part_texts()
PART_IDS = [name for name, _ in PARTS]

# The start-tag pattern as it was written before it was unrolled.
_START_TAG_BEFORE = re.compile(r"<[A-Za-z][^\s/<>]*+" + H._TAG_BODY + r">")

ATTR_NAMES = [
    "href",
    "HREF",
    "hReF",
    "src",
    "background",
    "bac\u212aground",  # KELVIN SIGN: its lower case is "k", so this is a URL attribute
    "data",
    "poster",
    "style",
    "STYLE",
    "\u017ftyle",  # LATIN SMALL LONG S: not "style" in lower case, so its "&" is marked
    "styles",
    "title",
    "alt",
    "data-href",
    "x",
]
VALUES = [
    '"https://e.example/?a=1&amp;b=2"',
    "'it\"s & more'",
    "plain",
    "a&b",
    "&",
    '"font-family:&quot;Arial&quot;"',
    "'a > b'",
    '"x href=y"',
    "' src=/z '",
    '"{{ url }}"',
    '""',
    "/",
    '"\u00a0&nbsp;"',
]
EQUALS = ["=", " = ", "\t=\n", "="]


@st.composite
def tag(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["a", "td", "img", "P", "v:rect", "x"]))
    parts = [f"<{name}"]
    for _ in range(draw(st.integers(0, 5))):
        attr = draw(st.sampled_from(ATTR_NAMES))
        blank = draw(st.sampled_from([" ", "\n", "  ", "\t"]))
        if draw(st.booleans()):
            parts.append(f"{blank}{attr}{draw(st.sampled_from(EQUALS))}{draw(st.sampled_from(VALUES))}")
        else:
            parts.append(f"{blank}{attr}")  # no value
    parts.append(draw(st.sampled_from([">", " />", "/>", " >"])))
    return "".join(parts)


TEXT = st.sampled_from(["", "text", "&nbsp;", " &amp; ", "a > b", '"', "'", "&copy;&reg;", "</td>", "<br>"])
DOCUMENT = st.lists(st.one_of(tag(), TEXT), max_size=40).map("".join)


@settings(max_examples=500, deadline=None)
@given(DOCUMENT)
def test_only_the_changed_attributes_change_as_the_reference_changed_them(html: str) -> None:
    ref.protects_as_reference(html)
    ref.protects_as_reference(f"<!doctype html><html><body>{html}</body></html>")


@settings(max_examples=200, deadline=None)
@given(DOCUMENT)
def test_text_already_holding_the_marker_keeps_every_ampersand_as_the_reference_did(html: str) -> None:
    ref.protects_as_reference(html + H.AMP_MARK)  # (amp off: only URL attributes change)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.one_of(tag(), TEXT, st.sampled_from(["<", '"', "'", ">", "<a", "=", "\u212a"])), max_size=30)
)
def test_the_unrolled_start_tag_pattern_matches_what_the_pattern_before_matched(pieces: list[str]) -> None:
    text = "".join(pieces)
    for at in (i for i, ch in enumerate(text) if ch == "<"):
        new, old = H._START_TAG.match(text, at), _START_TAG_BEFORE.match(text, at)
        assert (new and new.span()) == (old and old.span())


def test_a_repeated_tag_before_an_ampersand_is_matched_once_and_read_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cell = '<td style="font-size:0; line-height:0" class="spacer">&nbsp;</td>'
    inside = '<td title="a&amp;b" style="x">&nbsp;</td>'  # same start, "&" inside the tag
    quoted = "<td title='a>b'>&nbsp;</td><td title=\"x>&y\">z</td>"  # a ">" in quotes
    html = f"<html><body><table><tr>{cell * 50}{inside}{cell * 50}{quoted}{cell}</tr></table></body></html>"
    real = H._START_TAG
    matched = ref.count_start_tag_matches(monkeypatch)
    tags = H._tags_needing_work(html)
    monkeypatch.setattr(H, "_START_TAG", real)
    assert tags == ref.tags_needing_work(html) == ref.tags_needing_work_by_definition(html)
    assert len(matched) == 4  # the cell once (of 101), and each of the three other tags
    ref.protects_as_reference(html)


def with_odd_attribute_spelling(text: str) -> str:
    """URL attribute names in other cases (and the Kelvin sign), ``&`` in style values."""
    text = re.sub(r"(?<=\s)href(?=\s*=)", "HrEf", text)
    text = re.sub(r"(?<=\s)background(?=\s*=)", "bac\u212aground", text)
    return re.sub(r'(?<=\sstyle=")', "font-family:&quot;x&quot;;", text)


def test_there_are_html_parts_to_compare() -> None:
    assert len(PARTS) >= 10


@pytest.mark.parametrize("text", [text for _, text in PARTS], ids=PART_IDS)
def test_every_html_part_is_protected_and_restored_as_the_reference_did(text: str) -> None:
    ref.protects_as_reference(text)
    ref.protects_as_reference(with_odd_attribute_spelling(text))
    ref.protects_as_reference(text.replace('"', "'"))
