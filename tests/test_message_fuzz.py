"""Property tests for pipeline.contract.message: random MIME trees and random bytes.

Hypothesis builds nested multiparts (random boundaries, preambles, epilogues), leaves in random
charsets and transfer encodings with awkward bodies (trailing spaces, ``=`` signs, long lines),
and header blocks with folding. The properties are the promises message.py makes: untouched
bytes come out byte-identical, an edited part decodes (with the standard library) to exactly the
new text and nothing else changes, header edits never add a line a receiver would read as a new
field, and no input makes the parser raise anything but ``MessageError``.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import os
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pipeline.contract.message import Message, MessageError, Part, decode_header_value, normalize_newlines

# no example database: the checkout is shared, and the @example lines keep every regression
# The suite replays the same 60 examples each run (derandomize: no flaky CI); FUZZ_EXAMPLES=N searches
# N fresh random examples instead.
SETTINGS = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    derandomize=not os.environ.get("FUZZ_EXAMPLES"),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CHARSETS = ["utf-8", "iso-8859-1", "windows-1251", "us-ascii"]
CTES = ["7bit", "8bit", "quoted-printable", "base64"]
# characters each charset can hold, beyond printable ASCII
EXTRA = {"utf-8": "éßЖю€😀中", "iso-8859-1": "éüßñ¿", "windows-1251": "ЖЯюё№", "us-ascii": ""}
ASCII = "".join(chr(c) for c in range(32, 127))


def stdlib(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


# -- generated messages ------------------------------------------------------------------------
@dataclass
class Leaf:
    content_type: str
    charset: str
    cte: str
    text: str
    raw: bytes = b""


@dataclass
class Tree:
    """A generated message: its bytes, and every leaf with the exact bytes it was written as."""

    raw: bytes
    leaves: list[Leaf] = field(default_factory=list)


def body_text(charset: str) -> st.SearchStrategy[str]:
    """Lines with trailing spaces, '=' signs, dots, long runs: what trips up encoders."""
    alphabet = ASCII + EXTRA[charset]
    line = st.one_of(
        st.text(alphabet=alphabet, max_size=60),
        st.text(alphabet=alphabet, max_size=20).map(lambda s: s + "   "),
        st.text(alphabet="=A ", min_size=1, max_size=10),
        st.just("."),
        st.just("=3D=\t"),
        st.integers(min_value=70, max_value=400).map(lambda n: "x" * n),
    )
    return st.lists(line, max_size=8).map("\n".join)


def encode_body(text: str, charset: str, cte: str) -> bytes:
    data = text.encode(charset)
    if cte == "base64":
        return base64.encodebytes(data.replace(b"\n", b"\r\n")).replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
    return data.replace(b"\n", b"\r\n")


header_names = st.sampled_from(["X-Fuzz", "Comments", "X-Mailer", "Keywords", "X-Tag-1"])
header_values = st.text(alphabet=ASCII, max_size=60)


@st.composite
def extra_headers(draw: st.DrawFn) -> list[bytes]:
    """Header fields, some folded over several lines (with spaces or tabs)."""
    out = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(header_names)
        words = draw(st.lists(st.text(alphabet=ASCII.replace(" ", ""), min_size=1, max_size=12), max_size=5))
        line = f"{name}: " + " ".join(words) if words else f"{name}: {draw(header_values)}"
        if len(words) > 1 and draw(st.booleans()):  # fold before some words
            line = f"{name}: " + words[0] + "".join(draw(st.sampled_from(["\r\n ", "\r\n\t", " "])) + w for w in words[1:])
        out.append(line.encode("ascii"))
    return out


@st.composite
def leaves(draw: st.DrawFn) -> Leaf:
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(CTES))
    subtype = draw(st.sampled_from(["plain", "html"]))
    text = draw(body_text(charset))
    if subtype == "html":
        text = f"<html><body><p>{text}</p></body></html>"
    if cte == "7bit" and not text.isascii():
        cte = "8bit"
    if cte in ("7bit", "8bit") and any(len(line.encode(charset)) > 990 for line in text.split("\n")):
        cte = "quoted-printable"
    leaf = Leaf(f"text/{subtype}", charset, cte, text)
    headers = [f"Content-Type: text/{subtype}; charset={charset}".encode(), f"Content-Transfer-Encoding: {cte}".encode()]
    headers += draw(extra_headers())
    headers = draw(st.permutations(headers))
    leaf.raw = b"\r\n".join(headers) + b"\r\n\r\n" + encode_body(text, charset, cte)
    return leaf


boundaries = st.text(alphabet="abcXYZ0123456789'()+_,-./:=?", min_size=8, max_size=40).filter(
    lambda b: not b.endswith(" ")
)
filler = st.lists(st.text(alphabet=ASCII, max_size=40), max_size=3).map(lambda ls: "\r\n".join(ls).encode())


@st.composite
def entities(draw: st.DrawFn, depth: int = 0) -> tuple[bytes, list[Leaf]]:
    """(bytes of one MIME entity, its leaves in order)."""
    if depth >= 3 or draw(st.integers(0, 2)) == 0:
        leaf = draw(leaves())
        return leaf.raw, [leaf]
    boundary = draw(boundaries)
    subtype = draw(st.sampled_from(["mixed", "alternative", "related"]))
    children = draw(st.lists(entities(depth + 1), min_size=1, max_size=3))
    for raw, _ in children:
        assume(b"--" + boundary.encode() not in raw)
    preamble, epilogue = draw(filler), draw(filler)
    assume(boundary.encode() not in preamble + epilogue)
    quoted = f'"{boundary}"' if draw(st.booleans()) or not re.fullmatch(r"[A-Za-z0-9_.-]+", boundary) else boundary
    head = f"Content-Type: multipart/{subtype}; boundary={quoted}".encode()
    body = b"\r\n".join(
        ([preamble] if preamble else [])
        + [b"--" + boundary.encode() + b"\r\n" + raw for raw, _ in children]
        + [b"--" + boundary.encode() + b"--"]
    )
    if epilogue:
        body += b"\r\n" + epilogue
    body += b"\r\n" if draw(st.booleans()) else b""
    return head + b"\r\n\r\n" + body, [leaf for _, ls in children for leaf in ls]


@st.composite
def messages(draw: st.DrawFn) -> Tree:
    entity, found = draw(entities())
    top = [b"From: a@example.com", b"To: b@example.com", b"Subject: fuzz", b"MIME-Version: 1.0"]
    top += draw(extra_headers())
    raw = b"\r\n".join(draw(st.permutations(top))) + b"\r\n" + entity
    if draw(st.booleans()):  # some clients send bare LF: the parser normalises to CRLF
        raw = raw.replace(b"\r\n", b"\n")
    return Tree(raw, found)


def forget_raw(msg: Message) -> None:
    """Make every part serialise from the parsed tree instead of its cached bytes."""
    for part in msg.walk():
        part._raw = None
    msg._cache = None


# -- properties --------------------------------------------------------------------------------
@pytest.mark.slow  # a few seconds: subprocesses / many generated cases (fast loop skips it)
@SETTINGS
@given(messages())
def test_unedited_message_serialises_byte_identical_from_its_tree(tree: Tree) -> None:
    expected = normalize_newlines(tree.raw)
    msg = Message(tree.raw)
    assert msg.as_bytes() == expected
    assert msg.copy().as_bytes() == expected
    forget_raw(msg)
    assert msg.as_bytes() == expected  # the split into parts loses and invents nothing
    found = [p for p in msg.walk() if not p.is_multipart]
    assert [(p.content_type, p.charset, p.cte) for p in found] == [
        (leaf.content_type, leaf.charset, leaf.cte) for leaf in tree.leaves
    ]
    for part, leaf in zip(found, tree.leaves, strict=True):
        assert part.as_bytes().endswith(leaf.raw)
        assert part.text().replace("\r\n", "\n") == leaf.text


@st.composite
def edits(draw: st.DrawFn) -> tuple[Tree, int, str]:
    tree = draw(messages())
    index = draw(st.integers(0, len(tree.leaves) - 1))
    charset = tree.leaves[index].charset
    new = draw(body_text(charset)) + draw(st.sampled_from(["", "\n", "  \n", "=", "\u00e9\u20ac", "\u0416"]))
    return tree, index, new


def expected_text(part: Part, new: str) -> str:
    """What the edited part must decode to: HTML keeps its charset and writes &#N; for the rest."""
    if part.content_type != "text/html":
        return new
    out = []
    for ch in new:
        try:
            ch.encode(part.codec)
            out.append(ch)
        except UnicodeEncodeError:
            out.append(f"&#{ord(ch)};")
    return "".join(out)


@SETTINGS
@given(edits())
@example(
    (
        Tree(
            b"From: a@example.com\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            b"Content-Transfer-Encoding: 7bit\r\n\r\nold\r\n",
            [Leaf("text/plain", "us-ascii", "7bit", "old")],
        ),
        0,
        "caf\u00e9 = 3D  \n" + "y" * 1200,
    )
)
@pytest.mark.slow  # a few seconds: subprocesses / many generated cases (fast loop skips it)
def test_editing_one_part_leaves_every_other_part_byte_identical(case: tuple[Tree, int, str]) -> None:
    tree, index, new = case
    msg = Message(tree.raw)
    found = [p for p in msg.walk() if not p.is_multipart]
    target = found[index]
    before = [p.as_bytes() for p in found]
    if target.content_type == "text/html":
        msg.replace_html(target, new)
    else:
        msg.replace_text(target, new)
    want = expected_text(target, new)
    out = msg.as_bytes()
    assert b"\r" not in out.replace(b"\r\n", b"") and b"\n" not in out.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    again = [p for p in Message(out).walk() if not p.is_multipart]
    assert len(again) == len(found)
    for i, part in enumerate(again):
        if i != index:
            assert part.as_bytes() == before[i]
    leaves_std = [p for p in stdlib(out).walk() if not p.is_multipart()]
    decoded = leaves_std[index].get_content()
    assert decoded.replace("\r\n", "\n") == want


# -- arbitrary bytes ---------------------------------------------------------------------------
def exercise(msg: Message) -> None:
    """Everything a plugin does to read a message: none of it may raise on client input."""
    msg.as_bytes()
    for part in msg.walk():
        part.text()
        part.payload_bytes()
        _ = part.is_attachment, part.cte, part.charset
    for h in msg.headers:
        _ = h.value, h.raw_value
    msg.addresses("From")
    for part in msg.html_parts():  # and what css_inline / click_tracking do: edit the text
        msg.replace_html(part, part.text() + "<p>caf\u00e9 \u20ac</p>")
    for part in msg.text_parts():
        msg.replace_text(part, part.text() + "\ncaf\u00e9 \u20ac")
    Message(msg.as_bytes())


@SETTINGS
@given(st.binary(max_size=2000))
@example(b"")
@example(b"\r\n\r\n")
@example(b"a")
@example(b": \r\n\r\nbody")
@example(b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n")
@example(b"Content-Type: text/plain; charset=utf-16\r\n\r\nabc")
@example(b"Content-Type: text/plain; charset=idna\r\n\r\n\xff..")
@example(b"Content-Type: text/plain; charset=\"\xff\"\r\n\r\nabc")
@example(b"Content-Transfer-Encoding: base64\r\n\r\nQQ=Q=")
@example(b"Content-Transfer-Encoding: base64\r\n\r\nQ")
@example(b"Content-Type: text/plain; name=\xff\r\n\r\nx")
@example(b"Content-Type: text/html; charset=nope; name=\"\xc3\xa9\"\r\n\r\nx")
def test_arbitrary_bytes_parse_or_raise_message_error(data: bytes) -> None:
    try:
        msg = Message(data)
    except MessageError:
        return
    exercise(msg)


header_blocks = st.lists(
    st.tuples(
        st.sampled_from(["Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "From", "X-A", ""]),
        st.text(max_size=60),
    ),
    max_size=6,
)


@SETTINGS
@given(header_blocks, st.binary(max_size=300))
@example([("Content-Type", "text/plain; charset=utf-16")], b"abc")
@example([("Content-Type", "text/plain; charset=utf-32")], b"\x00\x01")
@example([("Content-Type", "text/plain; charset=idna")], b"a..b")
@example([("Content-Type", "text/html; charset=unicode_escape")], b"\\N{x")
@example([("Content-Type", "text/plain; charset=punycode")], b"\xff-")
@example([("Content-Type", "text/html; charset=idna")], b"<p>x</p>")
@example([("Content-Type", "\x00")], b"")
def test_arbitrary_header_blocks_parse_or_raise_message_error(headers: list[tuple[str, str]], body: bytes) -> None:
    head = b"\r\n".join(f"{n}: {v}".encode("utf-8", "surrogateescape") for n, v in headers)
    try:
        msg = Message(head + b"\r\n\r\n" + body)
    except MessageError:
        return
    exercise(msg)


# -- header edits ------------------------------------------------------------------------------
# any text but control characters (not allowed in a header, even encoded), plus injection attempts
unicode_values = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=120),
    st.tuples(st.text(max_size=20), st.sampled_from(["\r\n", "\n", "\r", "\0", "\r\n "]), st.text(max_size=20)).map(
        "".join
    ),
)


def fields_of(data: bytes) -> list[str]:
    """Top-level field names as a receiver reads them (a line not starting with space or tab)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].decode() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]


BASE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s\r\nX-Old: 1\r\n\r\nbody\r\n"


@SETTINGS
@given(st.sampled_from(["X-Fuzz", "Subject", "X-Old", "Comments"]), unicode_values, st.booleans())
@example("X-Fuzz", "a\r\nBcc: evil@example.com", False)
@example("Subject", "=?utf-8?q?encoded?=", False)
@example("X-Fuzz", "x" * 2000, False)
@example("X-Fuzz", "é" * 400, True)
@example("Subject", "  leading and trailing  ", False)
@example("Subject", "  caf\u00e9  ", True)
@example("X-Fuzz", "a\rb", False)
def test_header_add_and_change_round_trip_through_the_stdlib_parser(name: str, value: str, change: bool) -> None:
    """An ASCII value is wire text (plugins may pass encoded-words in it); any other is encoded."""
    want = decode_header_value(value).strip() if value.isascii() else value
    msg = Message(BASE)
    before = fields_of(BASE)
    try:
        if change:
            msg.change_header(name, value)
        else:
            msg.add_header(name, value)
    except MessageError:
        assert any(c in value for c in "\r\n\0")  # only injection attempts are refused
        assert msg.as_bytes() == BASE and not msg.edits
        return
    assert not any(c in value for c in "\r\n\0")
    out = msg.as_bytes()
    after = fields_of(out)
    expected = list(before) if change and name in before else before + [name]
    assert after == expected  # one field, never a new one smuggled in a value
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    parsed = stdlib(out)
    values = parsed.get_all(name)
    assert values is not None
    index = -1 if not change or name not in before else 0
    if value.isascii():  # written as is: blanks around it mean nothing (the stdlib keeps trailing ones)
        assert (str(values[index]).strip(), msg.get_all(name)[index]) == (want, want)
    else:
        assert (str(values[index]), msg.get_all(name)[index]) == (want, want)
