"""A worker checks the line ends of the copies it makes (``CopyResult.crlf``, carried to the egress
as ``Copy.crlf``), so the SMTP egress in the main process does not scan each copy again before it
sends the bytes as they are (issue 17: main-process CPU per copy; the check is 0.1-0.2 ms per 55 KB).

What must hold: the mark is exactly what ``crlf_only`` says of the copy's bytes, for every sample and
corpus message (and a message with bare LFs, which the parse normalises); a marked copy goes on the
wire as an unmarked one would (aiosmtplib's bytes, or aiosmtplib's own normalising path when it is
not clean); copies sharing one bytes object are checked once."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.chain.processing import CopyResult
from pipeline.config import EgressSection
from pipeline.contract.headers import crlf_only
from pipeline.delivery import workers
from pipeline.delivery.workers import WorkerPool, build_chain, mark_line_ends
from pipeline.egress import smtp
from pipeline.egress.base import Copy
from pipeline.egress.smtp import SmtpEgress, wire_data
from tests.support import parseable_messages
from tests.support.smtp_sink import start_sink
from tests.test_egress_wire_shared import aiosmtplib_wire
from tests.test_worker_serving import RCPTS, config_for, record_for

# bare LFs: ``Message`` makes them CRLF when it parses (a worker's copy of it is clean); a Copy
# built with these bytes as they are is not
BARE_LF = b"From: app@example.org\r\nTo: x@example.net\r\nSubject: lf\r\n\r\nfirst line\nsecond line\r\n"


def checks_in(module: Any, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The bytes ``module`` runs ``crlf_only`` on from now on."""
    checked: list[bytes] = []

    def counting(data: bytes) -> bool:
        checked.append(data)
        return crlf_only(data)

    monkeypatch.setattr(module, "crlf_only", counting)
    return checked


@pytest.mark.slow  # a worker process
async def test_copies_made_in_a_worker_carry_the_answer_of_the_line_end_check(data_dir) -> None:
    config = config_for(data_dir)
    pool = WorkerPool(config, 1, build_chain(config, []), [])
    await pool.start()
    try:
        found = [*parseable_messages(), ("bare-lf", BARE_LF)]
        marks = []
        for i, (name, raw) in enumerate(found):
            copies = await pool.process(record_for(raw, f"q{i}"), raw, "app@example.com", RCPTS)
            for c in copies:
                assert c.data is not None, name
                assert c.crlf is crlf_only(c.data), name
                marks.append(c.crlf)
    finally:
        await pool.close()
    assert marks and all(marks)  # (the public Message API writes CRLF only: see test_the_egress_...)


def test_copies_sharing_their_bytes_are_checked_once(monkeypatch) -> None:
    checked = checks_in(workers, monkeypatch)
    shared, own = b"Subject: a\r\n\r\nbody\r\n", b"Subject: b\r\n\r\nbare\nLF\r\n"
    copies = [CopyResult(f"r{i}@example.net", "app@example.org", shared) for i in range(3)]
    copies += [
        CopyResult("own@example.net", "app@example.org", own),
        CopyResult("no@example.net", "a@b", None),
    ]
    mark_line_ends(copies)
    assert checked == [shared, own]
    assert [c.crlf for c in copies] == [True, True, True, False, None]


def test_the_egress_takes_a_copys_mark_and_checks_only_an_unmarked_copy(monkeypatch) -> None:
    calls = checks_in(smtp, monkeypatch)
    clean = b"Subject: x\r\n\r\n.dot\r\nbody\r\n"
    assert wire_data(clean, True) == aiosmtplib_wire(clean) and calls == []
    assert wire_data(clean, False) is None and calls == []  # (the worker said no: aiosmtplib's path)
    assert wire_data(clean) == aiosmtplib_wire(clean) and calls == [clean]


async def test_marked_and_unmarked_copies_arrive_as_aiosmtplib_would_send_them() -> None:
    controller, sink = start_sink()
    clean = b"Subject: clean\r\n\r\n.dot-stuffed\r\nbody\r\n"
    copies = [
        Copy("Q1", "marked@example.net", "app@example.org", clean, crlf=True),
        Copy("Q1", "unmarked@example.net", "app@example.org", clean),
        Copy("Q1", "bare@example.net", "app@example.org", BARE_LF, crlf=False),
    ]
    egress = SmtpEgress(
        EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="none"), "gw.test"
    )
    try:
        results = await egress.deliver(copies)
    finally:
        await egress.close()
        controller.stop()
    assert [r.status for r in results] == ["sent"] * 3
    got = {m.rcpt_tos[0]: m.data for m in sink.messages}
    assert got["marked@example.net"] == got["unmarked@example.net"] == clean
    assert got["bare@example.net"] == BARE_LF.replace(b"line\nsecond", b"line\r\nsecond")  # normalised
