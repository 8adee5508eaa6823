"""The pipelined path's reply parser works on ``bytearray`` slices without copies, and still gives
exactly what aiosmtplib's own parser gives: on generated reply streams (multi-line replies, empty and
padded texts, bare LF line ends, non-UTF-8 octets) fed in random pieces, and the same errors."""

from __future__ import annotations

import random

import aiosmtplib
import pytest
from aiosmtplib.protocol import MAX_LINE_LENGTH, SMTPProtocol

from pipeline.egress.smtp import _parse_reply


def aiosmtplib_replies(stream: bytes) -> tuple[list[aiosmtplib.SMTPResponse], bytes]:
    """Its replies, and what it leaves in its buffer (an unfinished reply)."""
    protocol = SMTPProtocol.__new__(SMTPProtocol)  # only its parser: no loop, no transport
    protocol._buffer = bytearray(stream)
    replies = []
    while (reply := protocol._read_response_from_buffer()) is not None:
        replies.append(reply)
    return replies, bytes(protocol._buffer)


def generated_stream(rng: random.Random) -> bytes:
    texts = [
        b"",
        b" ",
        b"2.1.0 Ok",
        b"  padded \t",
        b"5.1.1 <x@example.net>: no",
        b"\xff\xfe caf\xc3\xa9",
        b"-",
    ]
    out = []
    for _ in range(rng.randint(1, 6)):
        code = rng.choice([b"250", b"354", b"421", b"550", b"221", b"503"])
        lines = rng.randint(1, 4)
        for i in range(lines):
            sep = b"-" if i < lines - 1 else rng.choice([b" ", b""])
            out.append(code + sep + rng.choice(texts) + rng.choice([b"\r\n", b"\n"]))
    return b"".join(out)


def test_generated_reply_streams_in_random_pieces_parse_as_aiosmtplib_parses_them() -> None:
    rng = random.Random(17)
    for _ in range(3000):
        stream = generated_stream(rng)
        expected = aiosmtplib_replies(stream)
        buffer, got = bytearray(), []
        cuts = sorted(rng.sample(range(len(stream) + 1), min(3, len(stream) + 1)))
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            buffer += stream[a:b]
            while (reply := _parse_reply(buffer)) is not None:
                got.append(reply)
        assert (got, bytes(buffer)) == expected, stream


@pytest.mark.parametrize(
    "stream",
    [b"hello\r\n", b"25x ok\r\n", b"250-ok\r\nbad\r\n", b"250 " + b"x" * MAX_LINE_LENGTH + b"\r\n"],
)
def test_malformed_and_overlong_replies_raise_what_aiosmtplib_raises(stream: bytes) -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException) as theirs:
        aiosmtplib_replies(stream)
    with pytest.raises(aiosmtplib.SMTPResponseException) as ours:
        _parse_reply(bytearray(stream))
    assert (ours.value.code, ours.value.message) == (theirs.value.code, theirs.value.message)
