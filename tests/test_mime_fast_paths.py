"""The fast paths of an edited part's line ends give exactly what the straightforward computations give.

``_PendingText.with_lf`` (the changed lines found around the differing bytes) against the
whole-text regex, and the first edit of a part whose new text has only CRLF line ends (its text
and payload kept, not decoded again) against decoding the serialised message, on generated
texts and on every HTML part of every message in samples/ and the shared corpus.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.contract.message import Message
from pipeline.contract.mime import _crlf_only, _PendingText
from tests.support import html_part_texts

PARTS = html_part_texts()


def lf_by_regex(new: bytes) -> bytes:
    return re.sub(rb"\r\n?", b"\n", new)


def edits_of(crlf: bytes) -> list[bytes]:
    """What plugins do to a part: a pixel before the end, a link near the start, both, line ends changed."""
    end = crlf.rfind(b"</body>")
    end = end if end >= 0 else len(crlf)
    first = crlf.find(b"href=")
    first = first if first >= 0 else 0
    pixel = b'<img src="https://t.example.net/o/x.gif" />'
    return [
        crlf[:end] + pixel + crlf[end:],
        crlf[:first] + b'href="https://t.example.net/c/abc" x' + crlf[first:],
        crlf[:first] + b"\r\n\r\n" + crlf[first:end] + pixel + b"\n" + crlf[end:],
        crlf[:first] + b"\r" + crlf[first:],
        crlf + b"\r\n",
        crlf[:-2] if crlf.endswith(b"\r\n") else crlf + b"x",
        b"",
        crlf,
    ]


@pytest.mark.parametrize("text", [text for _, text in PARTS], ids=[name for name, _ in PARTS])
def test_with_lf_is_the_whole_text_regex_on_every_html_part(text: str) -> None:
    data = lf_by_regex(text.encode("utf-8", "surrogateescape"))
    for lf in (data, data.rstrip(b"\n"), data + b"\n\n"):
        edit = _PendingText(lf, "quoted-printable", crlf=lf.replace(b"\n", b"\r\n"))
        for new in edits_of(edit.crlf or b""):
            got, only_crlf = edit.with_lf(new)
            assert got == lf_by_regex(new)
            assert only_crlf == (got.replace(b"\n", b"\r\n") == new)


LINES = st.lists(
    st.sampled_from([b"a", b"<p>", b"x" * 40, b"\r\n", b"\n", b"\r", b"\r\r\n", b" ", b"\xc3\xa9", b""]),
    max_size=50,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(LINES, LINES, st.integers(0, 10_000), st.integers(0, 10_000), LINES)
def test_with_lf_is_the_whole_text_regex_on_generated_edits(
    base: bytes, inserted: bytes, at: int, cut: int, tail: bytes
) -> None:
    lf = lf_by_regex(base)
    crlf = lf.replace(b"\n", b"\r\n")
    at = at % (len(crlf) + 1)
    end = min(len(crlf), at + cut % 7)
    new = crlf[:at] + inserted + crlf[end:] + tail
    got, only_crlf = _PendingText(lf, "identity", crlf=crlf).with_lf(new)
    assert got == lf_by_regex(new)
    assert only_crlf == (got.replace(b"\n", b"\r\n") == new)


TEXT = st.lists(
    st.sampled_from(["ab", "é", "Ж", "中", "\r\n", "\n", "\r", " ", "<a>", "\udce9"]), max_size=40
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["utf-8", "iso-8859-1", "windows-1251", "us-ascii", "koi8-r"]),
    st.sampled_from(["quoted-printable", "base64", "8bit", "7bit"]),
    TEXT,
    TEXT,
)
def test_a_first_edit_reads_back_as_decoding_the_serialised_part_gives(
    charset: str, cte: str, first: str, second: str
) -> None:
    """After one edit (then a second, made on what text() gave), the part's text and payload are
    what parsing the serialised message again gives, whatever the line ends of the new text.
    (No utf-16 here: an 8bit utf-16 part does not survive the wire's line-end normalisation, as before.)"""
    raw = (
        f"From: a@example.com\r\nContent-Type: text/html; charset={charset}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\nstart\r\n"
    ).encode()
    msg = Message(raw)
    for edit in (first, first.replace("\n", "\r\n").replace("\r\r", "\r"), "\r\n".join(first.splitlines())):
        part = msg.html_parts()[0]
        msg.replace_html(part, edit)
        for _ in range(2):
            again = Message(msg.as_bytes()).html_parts()[0]
            assert part.text() == again.text()
            assert part.payload_bytes() == again.payload_bytes()
            msg.replace_html(part, part.text() + second)


@settings(max_examples=500, deadline=None)
@given(LINES)
def test_crlf_only_is_true_exactly_when_every_line_end_is_a_crlf(data: bytes) -> None:
    lf = lf_by_regex(data)
    assert _crlf_only(data, lf) == (data.count(b"\r\n") == data.count(b"\r") == data.count(b"\n"))
