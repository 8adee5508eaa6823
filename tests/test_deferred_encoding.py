"""Issue 17 item 2: an edited part is transfer-encoded once per copy, when the copy is serialised.

Before, every ``replace_html`` re-encoded the whole part (CSS, then links, then the pixel: three
quoted-printable encodes per copy). The oracle here is that old behaviour: the same chain with
each edit encoded at once (``Part._materialize`` after every edit, which is exactly what the old
``_set_text`` did) must give byte-identical copies, DKIM signature included, for every sample
and every real template.
"""

from __future__ import annotations

import asyncio
import binascii
import codecs
import encodings.aliases
import re
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from test_message_fuzz import CHARSETS, CTES, SETTINGS, body_text, encode_body

from pipeline.chain.admission import admit_message
from pipeline.chain.driver import make_chain, make_config
from pipeline.config import ChainSection
from pipeline.contract.message import Message
from pipeline.contract.mime import _newlines_are_bytes, _PendingText, _QPLines
from pipeline.contract.vocabulary import EditAction
from pipeline.delivery.workers import run_processing
from tests.support import REFUSED_AT_DATA, SAMPLES, corpus_files, processed_files, sample_files

RCPTS = ["ann@example.com", "bob@example.org"]


@pytest.fixture(scope="module")
def default_chain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every built-in plugin of the default chain, every feature on, DKIM with a real key."""
    directory = tmp_path_factory.mktemp("encode-once")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = directory / "k.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    defaults = ChainSection().plugins  # the default chain, signer last
    config = make_config(
        {
            "gateway": {"data_dir": str(directory / "data")},
            "tracking": {
                "keys": {"k1": "encode-once"},
                "base_url": "https://t.example.net",
                "bounce_domain": "bounces.example.net",
            },
            "features": {
                "inlinecss": True,
                "trackclicks": True,
                "trackopens": True,
                "trackbounces": True,
                "listunsubscribe": True,
                "dkim": True,
            },
            "plugins": {
                "dkim_sign": {
                    "domains": {"example.com": {"selector": "a1", "key_file": str(key_file)}},
                    "default_domain": "example.com",
                }
            },
        },
        defaults,
    )
    return make_chain(config)


def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encode each edit at once, as every edit did before encoding was deferred."""
    replace_body = Message._replace_body

    def replace_and_encode(self: Message, part: Any, text: str, action: EditAction) -> None:
        replace_body(self, part, text, action)
        part._materialize()

    monkeypatch.setattr(Message, "_replace_body", replace_and_encode)


def count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts transfer encodings of a part (quoted-printable or base64), however they are done."""
    calls = [0]
    encoded = _PendingText.encoded

    def counting(self: _PendingText) -> bytes:
        if self._encoded is None and self.mode != "identity":
            calls[0] += 1
        return encoded(self)

    monkeypatch.setattr(_PendingText, "encoded", counting)
    return calls


def process(chain: Any, record: dict[str, Any], data: bytes) -> list[bytes]:
    copies = asyncio.run(run_processing(chain, record, data, "app@example.com", RCPTS, []))
    assert all(c.data is not None for c in copies), [c.verdict for c in copies]
    return [c.data for c in copies if c.data is not None]


@pytest.mark.parametrize(
    "path",
    processed_files(),
    ids=lambda p: p.name,
)
def test_deferred_encoding_gives_the_bytes_eager_encoding_gave(
    path: Path, default_chain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # DKIM t= the same in both runs
    verdict, ctx = asyncio.run(admit_message(default_chain, path.read_bytes(), "app@example.com", RCPTS))
    assert ctx is not None and (verdict is None or verdict.code < 400), verdict  # type: ignore[attr-defined]
    record, data = ctx.to_record(), ctx.message.as_bytes()
    with monkeypatch.context() as m:
        calls = count_encodes(m)
        deferred = process(default_chain, record, data)
        deferred_encodes = calls[0]
    with monkeypatch.context() as m:
        eager(m)
        calls = count_encodes(m)
        eagerly = process(default_chain, record, data)
        eager_encodes = calls[0]
    assert deferred == eagerly
    assert deferred_encodes <= eager_encodes
    assert any(b"DKIM-Signature:" in copy for copy in deferred)


@pytest.mark.parametrize("name", ["02-newsletter-alternative.eml", "size-typical.eml"])
def test_an_html_part_edited_by_several_plugins_is_encoded_once_per_copy(
    name: str, default_chain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [p for p in sample_files() + corpus_files() if p.name == name]
    assert paths, f"{name} is missing"
    verdict, ctx = asyncio.run(admit_message(default_chain, paths[0].read_bytes(), "app@example.com", RCPTS))
    assert verdict is None and ctx is not None
    record, data = ctx.to_record(), ctx.message.as_bytes()
    with monkeypatch.context() as m:
        calls = count_encodes(m)
        copies = asyncio.run(run_processing(default_chain, record, data, "app@example.com", RCPTS, []))
        deferred = calls[0]
    with monkeypatch.context() as m:
        eager(m)
        calls = count_encodes(m)
        process(default_chain, record, data)
        eagerly = calls[0]
    # every edit of a quoted-printable part: the transform's once, then each copy's own
    edits = [
        e for e in copies[0].trace if e["phase"] == "on_transform" for e in e["edits"] if " replace_" in e
    ]
    edits += [
        e
        for c in copies
        for t in c.trace
        if t["phase"] != "on_transform"
        for e in t["edits"]
        if " replace_" in e
    ]
    edited_per_copy = [
        sum(
            1
            for old, new in zip(Message(data).walk(), Message(c.data or b"").walk(), strict=True)
            if not old.is_multipart and old.as_bytes() != new.as_bytes()
        )
        for c in copies
    ]
    assert len(edits) > sum(edited_per_copy) >= len(RCPTS)  # several edits to the same part
    assert eagerly == len(edits)  # before: one encode per edit
    assert deferred == sum(edited_per_copy)  # now: one per edited part per copy


@given(st.sampled_from(CHARSETS), st.sampled_from(CTES), st.sampled_from(["plain", "html"]), st.data())
@SETTINGS
def test_text_of_an_edited_part_is_what_decoding_its_encoded_body_gives(
    charset: str, cte: str, subtype: str, data: st.DataObject
) -> None:
    """``text()`` of a part whose edit is not encoded yet skips the encode/decode round trip; it
    must return exactly what decoding the encoded body returns (the next plugin reads it)."""
    old, new = (
        data.draw(body_text(charset)),
        data.draw(body_text(charset)) + data.draw(st.sampled_from(["", "€ \udcff"])),
    )
    if cte == "7bit" and not old.isascii():
        cte = "8bit"
    raw = (
        f"From: a@example.com\r\nContent-Type: text/{subtype}; charset={charset}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode() + encode_body(old, charset, "8bit" if cte == "7bit" and not old.isascii() else cte)
    deferred, encoded = Message(raw), Message(raw)
    for msg in (deferred, encoded):
        part = msg.root
        msg._replace_body(part, new, EditAction.REPLACE_TEXT)
    encoded.root._materialize()
    assert encoded.root._edit is None and deferred.root._edit is not None
    assert deferred.root.text() == encoded.root.text()
    assert deferred.root.payload_bytes() == encoded.root.payload_bytes()
    assert deferred.as_bytes() == encoded.as_bytes()


qp_lines = st.lists(
    st.one_of(
        st.binary(max_size=90),
        st.text(alphabet='ab =.\t<>"é', max_size=200).map(lambda t: t.encode("utf-8")),
        st.sampled_from([b".", b"", b" ", b"=", b"x" * 75, b"x" * 76, b"x" * 77, b"y" * 73 + b"=", b"a \t"]),
    ).map(lambda line: line.replace(b"\n", b"").replace(b"\r", b"")),
    max_size=12,
)


@given(qp_lines, st.lists(st.tuples(st.integers(0, 11), qp_lines), min_size=1, max_size=5), st.booleans())
@SETTINGS
def test_quoted_printable_of_every_copy_is_what_b2a_qp_gives(
    base: list[bytes], variants: list[tuple[int, list[bytes]]], trailing_newline: bool
) -> None:
    """Copies after the first reuse the encodings of the lines they share with earlier copies;
    the result must still be ``binascii.b2a_qp`` of the whole text, byte for byte."""
    lines = _QPLines()
    texts = [base] + [base[:at] + new + base[at + len(new) :] for at, new in variants]
    for text in texts:
        data = b"\n".join(text) + (b"\n" if trailing_newline else b"")
        assert lines.encode(data) == binascii.b2a_qp(data, quotetabs=False, istext=True)


@pytest.mark.parametrize("name", sorted(REFUSED_AT_DATA))
def test_the_samples_left_out_above_are_refused_at_data(name: str, default_chain: Any) -> None:
    verdict, _ = asyncio.run(
        admit_message(default_chain, (SAMPLES / name).read_bytes(), "app@example.com", RCPTS)
    )
    assert verdict is not None and verdict.code == 550, verdict  # type: ignore[attr-defined]


qp_edits = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 6), st.sampled_from([b"", b"\n", b"x", b" ", b"=", b"\t\n", b"y" * 80])),
    min_size=1,
    max_size=4,
)


def _apply(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for at, removed, inserted in edits:
        at %= len(data) + 1
        data = data[:at] + inserted + data[at + removed :]
    return data


@given(qp_lines, st.lists(qp_edits, min_size=1, max_size=5), st.booleans())
@SETTINGS
def test_quoted_printable_of_copies_changed_anywhere_is_what_b2a_qp_gives(
    base: list[bytes], copies: list[list[tuple[int, int, bytes]]], trailing_newline: bool
) -> None:
    """Bytes inserted or removed anywhere, lines added or joined, at the start, the end, inside a
    long line: the reused prefix and suffix and the re-encoded middle are ``b2a_qp`` of the copy."""
    lines = _QPLines()
    first = b"\n".join(base) + (b"\n" if trailing_newline else b"")
    assert lines.encode_crlf(first) == binascii.b2a_qp(first, quotetabs=False, istext=True).replace(b"\n", b"\r\n")
    for edits in copies:
        data = _apply(first, edits).replace(b"\r", b"")
        expected = binascii.b2a_qp(data, quotetabs=False, istext=True)
        assert lines.encode(data) == expected
        assert lines.encode_crlf(data) == expected.replace(b"\n", b"\r\n")


line_end_edits = st.lists(
    st.tuples(
        st.integers(0, 10_000), st.integers(0, 4), st.sampled_from([b"", b"\r\n", b"\n", b"\r", b"a", b"\r\r\n", b"<img>"])
    ),
    min_size=1,
    max_size=4,
)


@given(st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\n\n", b" ", b"x" * 30]), max_size=40), line_end_edits)
@SETTINGS
def test_an_edit_read_as_crlf_is_brought_to_lf_exactly_as_the_regex_does(
    pieces: list[bytes], edits: list[tuple[int, int, bytes]]
) -> None:
    """``with_lf`` compares the edited bytes with the CRLF form they were read from and rewrites
    only the lines between: the result must be the whole-text conversion (CRLF and lone CR to LF),
    and "only CRLF line ends" must be true exactly when the CRLF form round-trips."""
    data = b"".join(pieces)
    edit = _PendingText(data, "identity", crlf=data.replace(b"\n", b"\r\n"))
    new = _apply(edit.crlf or b"", edits)
    lf, only_crlf = edit.with_lf(new)
    assert lf == re.sub(rb"\r\n?", b"\n", new)
    assert only_crlf == (lf.replace(b"\n", b"\r\n") == new)


def test_line_ends_are_replaced_on_encoded_bytes_only_where_a_cr_or_lf_byte_is_that_character() -> None:
    """``_newlines_are_bytes``: in each charset it accepts, the only characters whose encoding has
    a byte 10 or 13 are LF and CR themselves (each single-byte charset's whole repertoire; UTF-8
    by construction, checked on every character class). UTF-16 and the ISO-2022 family are refused."""
    accepted = []
    for name in sorted(set(encodings.aliases.aliases.values())):
        if not _newlines_are_bytes(name):
            continue
        accepted.append(name)
        repertoire = "".join(bytes([b]).decode(name, "ignore") for b in range(256))
        if codecs.lookup(name).name == "utf-8":
            repertoire = "".join(map(chr, [*range(0, 0x800, 7), *range(0x800, 0xD800, 97), 0xFFFD, 0x1F600]))
        for ch in repertoire:
            encoded = ch.encode(name)
            assert (10 in encoded or 13 in encoded) == (ch in "\r\n"), (name, ch)
    assert {"utf_8", "latin_1", "cp1251", "ascii"} <= set(accepted)
    for name in ("utf-16", "utf-32", "iso2022_jp", "cp037", "shift_jis", "no-such-charset"):
        assert not _newlines_are_bytes(name)


@given(
    st.sampled_from(["utf-8", "iso-8859-1", "windows-1251", "us-ascii", "utf-16", "iso-2022-jp"]),
    st.sampled_from(["quoted-printable", "base64", "8bit"]),
    st.lists(st.sampled_from(["ab", "é", "Ж", "中", "\r\n", "\n", "\r", " ", "\r\r\n", "<a>"]), max_size=30),
    line_end_edits,
)
@SETTINGS
def test_every_edit_is_stored_as_the_text_with_lf_line_ends_in_its_charset(
    charset: str, cte: str, words: list[str], edits: list[tuple[int, int, bytes]]
) -> None:
    """Two edits of a part, the second made on what ``text()`` gave (the comparison path): the
    stored bytes are the text with CRLF and lone CR made LF, then encoded, as before; and the
    part's text and payload are what decoding its encoded body gives."""
    raw = (
        f"From: a@example.com\r\nContent-Type: text/html; charset={charset}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode() + encode_body("start", "us-ascii", cte)
    msg = Message(raw)
    part = msg.root
    first = "".join(words)
    msg.replace_html(part, first)
    read = part.text()
    second = _apply(read.encode("utf-8", "surrogateescape"), edits).decode("utf-8", "surrogateescape")
    msg.replace_html(part, second)
    edit = part._edit
    assert edit is not None
    normalised = second.replace("\r\n", "\n").replace("\r", "\n")
    try:
        expected = normalised.encode(part.codec, "smtpgate-html")
    except (UnicodeError, LookupError):
        expected = normalised.encode("utf-8", "surrogateescape")
    assert edit.data == expected
    decoded = Message(msg.as_bytes()).root
    assert part.payload_bytes() == decoded.payload_bytes()
    assert part.text() == decoded.text()
