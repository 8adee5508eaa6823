"""The DATA phase's CRLF check (``crlf_only``: two table translations and a shifted compare) decides
exactly as counting did, so ``wire_data`` still gives aiosmtplib's bytes or declines the same copies:
on every short mix of CR, LF, dots and text, on long messages with one stray CR or LF anywhere, and on
every message in samples/ and the corpus."""

from __future__ import annotations

import itertools
import random

from pipeline.contract.headers import crlf_only
from pipeline.egress.smtp import wire_data
from tests.support import corpus_files, sample_files
from tests.test_egress_wire_shared import aiosmtplib_wire


def counted(data: bytes) -> bool:
    """The old test: as many CRLFs as CRs and as LFs."""
    return data.count(b"\r\n") == data.count(b"\r") == data.count(b"\n")


def test_every_short_mix_of_cr_lf_dots_and_text_is_decided_as_counting_did() -> None:
    checked = 0
    for n in range(9):
        for parts in itertools.product((b"a", b".", b"\r", b"\n"), repeat=n):
            data = b"".join(parts)
            clean = counted(data)
            assert crlf_only(data) is clean, data
            assert wire_data(data) == (aiosmtplib_wire(data) if clean else None), data
            checked += 1
    assert checked == sum(4**n for n in range(9))


def test_one_stray_cr_or_lf_anywhere_in_a_long_message_is_found() -> None:
    rng = random.Random(17)
    body = b"".join(
        rng.choice([b"line of text\r\n", b".dot\r\n", b"\r\n", b"x" * 70 + b"\r\n"]) for _ in range(800)
    )
    assert crlf_only(body) and wire_data(body) == aiosmtplib_wire(body)
    for pos in [0, 1, 2, len(body) - 2, len(body) - 1, len(body), *rng.sample(range(len(body)), 200)]:
        for stray in (b"\r", b"\n"):
            data = body[:pos] + stray + body[pos:]
            assert crlf_only(data) is counted(data), (pos, stray)
            assert wire_data(data) == (aiosmtplib_wire(data) if counted(data) else None), (pos, stray)
        # a CRLF pair taken apart or reversed
        data = body.replace(b"\r\n", b"\n\r", 1 + pos % 3)
        assert crlf_only(data) is counted(data) is False


def test_every_sample_and_corpus_message_as_is_lf_only_and_crlf_normalised() -> None:
    files = sample_files() + corpus_files()
    assert files
    for path in files:
        raw = path.read_bytes()
        lf = raw.replace(b"\r\n", b"\n")
        for data in (raw, lf, lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")):
            clean = counted(data)
            assert crlf_only(data) is clean, path
            assert wire_data(data) == (aiosmtplib_wire(data) if clean else None), path
