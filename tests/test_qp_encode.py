"""``qp_encode_crlf`` is ``binascii.b2a_qp(data, quotetabs=False, istext=True)`` with CRLF line ends, byte for byte.

Checked on generated texts built to hit the line-cutting rules (lines around 76 columns, escapes
at every column near the cut, blanks before line ends and at the very end, lone ``.`` lines, high
and control bytes), and on every HTML part of every message in samples/ and the shared corpus,
as written and as each CSS engine inlines it (the text a part is encoded from after editing).
"""

from __future__ import annotations

import binascii
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.contract import mime
from pipeline.contract.mime import _QPLines, qp_encode_crlf
from plugins.css_inline import CssInlineEngine, PremailerEngine
from tests.support import html_part_texts


def b2a_qp_crlf(data: bytes) -> bytes:
    return binascii.b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", b"\r\n")


TEXTS = html_part_texts()
ENGINES = [CssInlineEngine(False), PremailerEngine(False)]


def encodings_of(text: str) -> list[bytes]:
    """The LF data a part is encoded from: in UTF-8 and Latin-1 (as its charset may be), as written."""
    lf = text.replace("\r\n", "\n").replace("\r", "\n")
    return [lf.encode("utf-8", "surrogateescape"), lf.encode("latin-1", "xmlcharrefreplace")]


@pytest.mark.parametrize("text", [text for _, text in TEXTS], ids=[name for name, _ in TEXTS])
def test_qp_encode_is_b2a_qp_on_every_html_part(text: str) -> None:
    inlined = [engine.inline(text) for engine in ENGINES]
    for version in [text, *inlined]:
        for data in encodings_of(version):
            assert qp_encode_crlf(data) == b2a_qp_crlf(data)
            assert _QPLines().encode_crlf(data) == b2a_qp_crlf(data)


def test_the_html_corpus_is_there() -> None:
    assert len(TEXTS) >= 10  # (so the parametrised test above is not silently empty)


PIECES = st.sampled_from(
    [
        b"a",
        b"xy",
        b"=",
        b"==",
        b" ",
        b"\t",
        b".",
        b"\n",
        b"\n.\n",
        b'<a href="x">',
        b"\xc3\xa9",
        b"\xe2\x80\x99",
        b"\xff",
    ]
)


@st.composite
def lines_near_the_cut(draw: st.DrawFn) -> bytes:
    """Lines of 60 to 240 bytes with ``=`` (an escape) and blanks placed around columns 72 to 77."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        length = draw(st.sampled_from([0, 1, 72, 73, 74, 75, 76, 77, 78, 150, 151, 152, 225, 226, 240]))
        line = bytearray(b"y" * length)
        for at in draw(st.lists(st.integers(0, max(length - 1, 0)), max_size=6)):
            if length:
                line[at] = draw(st.sampled_from(b"= \t.\xe9"))
        out.append(bytes(line))
    data = b"\n".join(out)
    return data + draw(st.sampled_from([b"", b"\n", b" ", b"\t", b"\n\n", b"."]))


@settings(max_examples=1500, deadline=None)
@given(st.lists(PIECES, max_size=200).map(b"".join))
def test_qp_encode_is_b2a_qp_on_generated_text(data: bytes) -> None:
    assert qp_encode_crlf(data) == b2a_qp_crlf(data)


@settings(max_examples=1500, deadline=None)
@given(lines_near_the_cut())
def test_qp_encode_is_b2a_qp_where_lines_are_cut(data: bytes) -> None:
    assert qp_encode_crlf(data) == b2a_qp_crlf(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_qp_encode_is_b2a_qp_on_any_bytes(data: bytes) -> None:
    assert qp_encode_crlf(data) == b2a_qp_crlf(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b".",
        b"a\n.\nb",
        b".\n",
        b"x \n",
        b"x\t\ny",
        b"x ",
        b"y" * 75 + b" \n",
        b"y" * 76 + b"\n",
        b"y" * 77,
        b"y" * 73 + b"=" + b"y" * 5,
        b"y" * 74 + b"=" + b"y" * 5,
        b"y" * 72 + b"=",
        b"\xe2\x80\x99" * 40,
        "Привет, мир! ".encode() * 200,
        b"a\x00b",
        b"a\rb\r\n",
    ],
)
def test_qp_encode_is_b2a_qp_on_the_edge_cases(data: bytes) -> None:
    assert qp_encode_crlf(data) == b2a_qp_crlf(data)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=40), st.integers(0, 2**32))
def test_qp_encode_escapes_sparse_high_bytes_as_b2a_qp_by_either_route(high: list[int], seed: int) -> None:
    """Sparse high bytes (under 1 in 64) are escaped by one replace per distinct value when they are
    few (a no-break space, curly quotes) and by the regex when there are more than a dozen."""
    rng = random.Random(seed)
    text = bytearray(
        b"".join(
            rng.choice([b'<td style="a:b">', b"word ", b"y" * 80, b"\n", b"="]) for _ in range(64 * len(high))
        )
    )
    for value in high:
        text.insert(rng.randrange(len(text) + 1), value)
    data = bytes(text).rstrip(b" \t")
    assert qp_encode_crlf(data) == b2a_qp_crlf(data)


def test_qp_encode_takes_both_escape_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sparse high bytes of a dozen distinct values or fewer are escaped by replaces, more by the
    regex; both give what ``b2a_qp`` gives."""
    searched: list[bytes] = []

    class Spy:
        def sub(self, repl: object, data: bytes) -> bytes:
            searched.append(data)
            return real.sub(repl, data)  # type: ignore[arg-type]

    real = mime._QP_HIGH
    monkeypatch.setattr(mime, "_QP_HIGH", Spy())
    few = (b"x" * 200 + b"\xc2\xa0") * 20
    many = b"".join(b"y" * 100 + bytes((v,)) for v in range(0x80, 0xA0))
    for data, regex in ((few, False), (many, True)):
        assert len(data.translate(None, mime._QP_ASCII)) <= len(data) >> 6  # sparse: not left to b2a_qp
        searched.clear()
        assert qp_encode_crlf(data) == b2a_qp_crlf(data)
        assert bool(searched) is regex
