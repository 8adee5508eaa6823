"""The DATA phase's wire form is made once per bytes object of a ``deliver`` (copies no plugin changed
per recipient share one), with a two-pass CRLF check; the bytes on the wire stay exactly what
aiosmtplib would send (issue 17: main-process CPU per copy)."""

from __future__ import annotations

import random

from pipeline.config import EgressSection
from pipeline.egress import smtp
from pipeline.egress.base import Copy
from pipeline.egress.smtp import SmtpEgress, wire_data
from tests.support import corpus_files, sample_files
from tests.support.smtp_sink import start_sink


def aiosmtplib_wire(data: bytes) -> bytes:
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"


def test_wire_data_matches_aiosmtplib_or_declines_on_generated_inputs() -> None:
    """Random mixes of CR, LF, CRLF and dots: ``None`` exactly when aiosmtplib would change a line
    ending (then its own path sends the copy), else its bytes."""
    rng = random.Random(17)
    alphabet = [b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b" "]
    declined = prepared = 0
    for _ in range(20_000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        clean = data.count(b"\r\n") == data.count(b"\r") == data.count(b"\n")  # the old three-count test
        wire = wire_data(data)
        if clean:
            assert wire == aiosmtplib_wire(data), data
            prepared += 1
        else:
            assert wire is None, data
            declined += 1
    assert prepared > 1000 and declined > 1000


def test_wire_data_on_every_sample_as_is_and_crlf_normalised() -> None:
    for path in sample_files() + corpus_files():
        raw = path.read_bytes()
        for data in (raw, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")):
            clean = data.count(b"\r\n") == data.count(b"\r") == data.count(b"\n")
            assert wire_data(data) == (aiosmtplib_wire(data) if clean else None), path


async def test_copies_sharing_their_bytes_share_one_wire_form_and_arrive_identical(monkeypatch) -> None:
    made: list[int] = []
    real = smtp.wire_data

    def counted(data: bytes, crlf: bool | None = None) -> bytes | None:
        made.append(id(data))
        return real(data, crlf)

    monkeypatch.setattr(smtp, "wire_data", counted)
    controller, sink = start_sink()
    shared = b"Subject: one for all\r\n\r\n.dot-stuffed line\r\nbody\r\n"
    own = b"Subject: mine\r\n\r\nhello\r\n"
    copies = [Copy("Q1", f"r{i}@example.net", "app@example.org", shared) for i in range(6)]
    copies.append(Copy("Q1", "own@example.net", "app@example.org", own))
    egress = SmtpEgress(
        EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="none"), "gw.test"
    )
    try:
        results = await egress.deliver(copies)
        alone = await egress.deliver([copies[0]])  # a memo lives as long as its deliver call
    finally:
        await egress.close()
        controller.stop()
    assert [r.status for r in results + alone] == ["sent"] * 8
    assert sorted(made) == sorted([id(shared), id(own), id(shared)])
    assert smtp._WIRES.get() is None
    got = {m.rcpt_tos[0]: m.data for m in sink.messages}
    assert len(sink.messages) == 8
    assert [got[f"r{i}@example.net"] for i in range(6)] == [shared] * 6  # un-dot-stuffed by the sink
    assert got["own@example.net"] == own
