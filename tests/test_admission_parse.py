"""Issue 17 item 3: admission parses the header block only; the limits at DATA scan the MIME
structure without building the tree or decoding, and give the replies the full parse gave.

The oracles are the code this replaced: the regex delimiter search, and the limits walked over
the fully parsed tree with every HTML part decoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_hostile_clients import many_html_parts, nested_multiparts
from test_message_fuzz import SETTINGS, Tree, messages

from pipeline import MessageContext, Plugin, hookimpl
from pipeline.chain.admission import admit_message
from pipeline.chain.driver import make_chain, make_config, run_chain
from pipeline.chain.limits import _LINK, check_limits
from pipeline.config import ChainSection, LimitsSection
from pipeline.contract.message import Message, normalize_newlines
from pipeline.contract.mime import _delimiters
from pipeline.contract.verdicts import Reject
from tests.support import corpus_files, sample_files


def regex_delimiters(body: bytes, boundary: bytes) -> list[tuple[int, int, bool]]:
    """The delimiter search as it was (a regex from the literal ``--boundary``)."""
    pat = re.compile(rb"--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|\Z)")
    matches: list[tuple[int, int, bool]] = []
    prev_end = 0
    for m in pat.finditer(body):
        start = m.start()
        if start == 0:
            pass
        elif start - 2 >= prev_end and body[start - 2 : start] == b"\r\n":
            start -= 2
        else:
            continue
        matches.append((start, m.end(), bool(m.group(1))))
        prev_end = m.end()
    return matches


def tree_limits(message: Message, limits: LimitsSection) -> Reject | None:
    """The limits as they were checked: over the parsed tree, every HTML part decoded."""
    if message.root.truncated == "parts":
        return Reject(
            552, "5.3.4", f"Message has more than {limits.max_mime_parts} MIME parts (limits.max_mime_parts)"
        )
    parts = html_parts = links = html_bytes = 0
    for part in message.walk():
        if part.depth > limits.max_mime_depth:
            return Reject(
                554,
                "5.6.0",
                f"Message MIME nesting exceeds {limits.max_mime_depth} levels (limits.max_mime_depth)",
            )
        parts += 1
        if parts > limits.max_mime_parts:
            return Reject(
                552,
                "5.3.4",
                f"Message has more than {limits.max_mime_parts} MIME parts (limits.max_mime_parts)",
            )
        if part.is_multipart or part.content_type != "text/html" or part.is_attachment:
            continue
        html_parts += 1
        if html_parts > limits.max_html_parts:
            return Reject(
                552,
                "5.3.4",
                f"Message has more than {limits.max_html_parts} HTML parts (limits.max_html_parts)",
            )
        data = part.payload_bytes()
        html_bytes += len(data)
        if html_bytes > limits.max_html_bytes:
            return Reject(
                552,
                "5.3.4",
                f"Message HTML exceeds {limits.max_html_bytes} bytes decoded (limits.max_html_bytes)",
            )
        links += len(_LINK.findall(data))
        if links > limits.max_links:
            return Reject(552, "5.3.4", f"Message has more than {limits.max_links} links (limits.max_links)")
    return None


def same_refusal(raw: bytes, limits: LimitsSection) -> None:
    scanned = Message(raw, max_depth=limits.max_mime_depth, max_parts=limits.max_mime_parts)
    parsed = Message(raw, max_depth=limits.max_mime_depth, max_parts=limits.max_mime_parts)
    assert check_limits(scanned, limits) == tree_limits(parsed, limits)
    assert scanned._unsplit == bool(scanned._root._boundary)  # the check built no tree


delimiter_bodies = st.lists(
    st.sampled_from([b"--b", b"--b--", b"\r\n", b" ", b"\t", b"x", b"-", b"--bb", b"\r", b"\n"]), max_size=30
).map(b"".join)


@given(delimiter_bodies)
@SETTINGS
def test_delimiters_are_found_where_the_regex_found_them(body: bytes) -> None:
    assert _delimiters(body, b"b", 0, len(body)) == regex_delimiters(body, b"b")
    padded = b"zz" + body + b"yy"  # offsets into a larger buffer: the same lines, shifted
    shifted = [(s + 2, e + 2, c) for s, e, c in regex_delimiters(body, b"b")]
    assert _delimiters(padded, b"b", 2, 2 + len(body)) == shifted


def shape(walk: Iterable[Any]) -> list[tuple[int, str, bool, bool, str, bytes]]:
    return [
        (p.depth, p.content_type, p.is_multipart, p.is_attachment, p.cte, p.payload_bytes()) for p in walk
    ]


@given(messages(), st.integers(0, 4), st.integers(0, 8))
@SETTINGS
def test_the_structure_scan_sees_the_tree_the_parser_builds(
    tree: Tree, max_depth: int, max_parts: int
) -> None:
    for bounds in ((None, None), (max_depth, max_parts)):
        msg = Message(tree.raw, max_depth=bounds[0], max_parts=bounds[1])
        structure = msg.structure()
        assert shape(structure.walk()) == shape(msg.walk())
        assert structure.truncated == msg.root.truncated


@given(
    messages(),
    st.integers(1, 4),
    st.integers(1, 8),
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(1, 400),
)
@SETTINGS
def test_limits_from_the_scan_refuse_exactly_what_the_parsed_tree_refused(
    tree: Tree, depth: int, parts: int, html_parts: int, links: int, html_bytes: int
) -> None:
    same_refusal(
        tree.raw,
        LimitsSection(
            max_mime_depth=depth,
            max_mime_parts=parts,
            max_html_parts=html_parts,
            max_links=links,
            max_html_bytes=html_bytes,
        ),
    )


def html_message(html: bytes, cte: str) -> bytes:
    body = {
        "base64": lambda: base64.encodebytes(html).replace(b"\n", b"\r\n"),
        "quoted-printable": lambda: binascii.b2a_qp(html, quotetabs=True).replace(b"\n", b"\r\n"),
    }[cte]()
    return (
        b"From: app@shop.example\r\nTo: user@local.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="q"\r\n\r\n--q\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
        b"--q\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: "
        + cte.encode()
        + b"\r\n\r\n"
        + body
        + b"\r\n--q--\r\n"
    )


@pytest.mark.parametrize("cte", ["base64", "quoted-printable"])
def test_links_hidden_by_the_transfer_encoding_are_still_counted(cte: str) -> None:
    """``<`` written ``=3C`` in quoted-printable, or any link in base64: the encoded text alone
    cannot show the links, so past the cheap bound the part is decoded and counted."""
    links = b"".join(b'<a href="https://example.com/%d">x</a>' % i for i in range(40))
    raw = html_message(links, cte)
    if cte == "quoted-printable":
        raw = raw.replace(b"<a", b"=3Ca")
        assert b"<a" not in raw
    limits = LimitsSection(max_links=39)
    assert check_limits(Message(raw), limits) == Reject(
        552, "5.3.4", "Message has more than 39 links (limits.max_links)"
    )
    assert check_limits(Message(raw), LimitsSection(max_links=40)) is None
    same_refusal(raw, limits)
    same_refusal(raw, LimitsSection(max_html_bytes=len(links) - 1))
    same_refusal(raw, LimitsSection(max_html_bytes=len(links)))


@pytest.mark.parametrize("raw", [nested_multiparts(30), many_html_parts(150)], ids=["nested", "many"])
def test_hostile_shapes_get_the_same_refusal_as_before(raw: bytes) -> None:
    for limits in (LimitsSection(), LimitsSection(max_mime_depth=5, max_mime_parts=20, max_html_parts=10)):
        same_refusal(raw, limits)


@pytest.mark.parametrize("path", sample_files() + corpus_files(), ids=lambda p: p.name)
def test_admission_reads_headers_and_spools_the_bytes_the_parsed_tree_gave(path) -> None:  # type: ignore[no-untyped-def]
    """Through the default admission chain the MIME tree is never built (the limits scan it),
    and the spooled bytes are the ones serialising the fully parsed message gave."""
    chain = make_chain(
        make_config(
            {"tracking": {"keys": {"k1": "x"}, "base_url": "https://t.example.net"}},
            [p for p in ChainSection().plugins if p != "dkim_sign"],
        )
    )
    raw = path.read_bytes()
    verdict, ctx = asyncio.run(admit_message(chain, raw, "app@example.com", ["user@example.org"]))
    if ctx is None:
        pytest.fail(f"{path.name}: {verdict}")
    message = ctx.message
    assert message._unsplit == bool(message._root._boundary)
    parsed = Message(raw)
    parsed.root  # noqa: B018 - the tree, as admission built it before
    for edit in message.edits:
        assert edit.action not in ("replace_html", "replace_text"), edit  # admission edits headers, envelope
    for h in list(parsed.headers):
        parsed.remove_header(h.name)
    for h in message.headers:
        parsed.insert_raw_header(h.raw, first=False)
    assert message.as_bytes() == parsed.as_bytes()


def test_a_child_without_its_empty_line_is_repaired_as_the_parsed_tree_did() -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain\r\nno empty line here\r\n--b--\r\n"
    )
    lazy, parsed = Message(raw), Message(raw)
    parsed.root  # noqa: B018
    for msg in (lazy, parsed):
        msg.add_header("X-Edited", "1")
    assert lazy.as_bytes() == parsed.as_bytes()
    assert b"Content-Type: text/plain\r\n\r\nno empty line here" in lazy.as_bytes()
    assert Message(raw).as_bytes() == raw  # unedited: the bytes as received


@given(
    st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"a", b"\n\r", b"\r\r\n"]), max_size=40).map(b"".join)
)
@SETTINGS
def test_line_endings_are_normalised_to_crlf_exactly_when_one_is_bare(raw: bytes) -> None:
    expected = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert normalize_newlines(raw) == expected
    if expected == raw:
        assert normalize_newlines(raw) is raw  # CRLF only: no copy


def test_an_admission_plugin_reads_the_body_on_demand_through_the_same_api() -> None:
    """Parts are there when a plugin asks for them at DATA: the first access splits the tree."""
    seen: list[str] = []

    class Reader(Plugin):
        name = "reader"

        @hookimpl
        def on_message(self, ctx: MessageContext) -> Reject | None:
            assert ctx.message._unsplit  # nothing asked for the parts before this hook
            html = ctx.message.html_parts()
            seen.append(html[0].text())
            if "forbidden" in seen[-1]:
                return Reject(550, "5.7.1", "Content refused")
            return None

    raw = html_message(b'<p>hello <a href="https://example.com/">x</a></p>', "quoted-printable")
    result = run_chain(raw, [Reader], rcpt_tos=["user@local.test"])
    assert result.verdict is None and seen == ['<p>hello <a href="https://example.com/">x</a></p>']
    refused = run_chain(raw.replace(b"hello", b"forbidden"), [Reader], rcpt_tos=["user@local.test"])
    assert refused.verdict is not None and refused.verdict.reply() == "550 5.7.1 Content refused"
