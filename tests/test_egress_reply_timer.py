"""The pipelined path's per-reply time-out, now one lazily re-armed timer per connection: every wait for a
reply still gets the whole time-out however long the connection has been in use, a late reply still ends
in the same result as the command-by-command path, and the reader kept on a connection starts each
transaction as a fresh one would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from pipeline.egress.smtp import HopPool, _PipelineReader, open_connection, send_copy
from tests.test_egress_pipelining import SILENCE, Hop, _both, _copy, _deliver

SLOW = "slow@example.net"  # the hop never answers the end of this copy's data


@pytest.fixture
async def hop() -> AsyncIterator[Hop]:
    h = await Hop().start()
    yield h
    await h.stop()


async def test_a_late_reply_on_a_long_used_connection_waits_the_whole_time_out_and_matches_the_plain_path(
    hop: Hop,
) -> None:
    timeout = 0.4
    hop.dribble = True  # one byte a millisecond: the first copies keep the connection busy ~0.1 s each
    hop.script = {f". {SLOW}": SILENCE}
    hop.pipelining = True
    hop.clear()

    async def connect() -> aiosmtplib.SMTP:
        return await open_connection(
            "127.0.0.1", hop.port, helo="gw.test", timeout=timeout, tls="none", verify=False, ca_file=None
        )

    pool = HopPool("127.0.0.1", hop.port, 1, connect)
    loop = asyncio.get_running_loop()
    try:
        first = [await send_copy(pool, _copy(f"r{i}@example.net")) for i in range(3)]
        started = loop.time()
        late = await send_copy(pool, _copy(SLOW))
        waited = loop.time() - started
    finally:
        await pool.close()
    assert [r.status for r in first] == ["sent"] * 3 and hop.connections == 1
    # the timer armed by the first copy's first wait fired long before: it must not have cut this wait short
    assert waited >= timeout
    assert late.status == "deferred" and "Timed out waiting for server response" in late.reply

    results, seen = await _both(hop, [_copy(), _copy(SLOW), _copy()], timeout=timeout)
    assert [r.status for r in results] == ["sent", "deferred", "sent"] and seen["connections"] == 2


async def test_the_reader_kept_on_a_connection_is_reset_for_each_transaction(hop: Hop) -> None:
    conn = await open_connection(
        "127.0.0.1", hop.port, helo="gw.test", timeout=5.0, tls="none", verify=False, ca_file=None
    )
    try:
        protocol = conn.protocol
        assert protocol is not None
        reader = _PipelineReader.of(conn, protocol)
        reader.data_received(b"250 2.0.0 left over\r\n451 half")
        assert _PipelineReader.of(conn, protocol) is reader
        assert not reader._replies and not reader._buffer and reader._error is None
        other = await open_connection(
            "127.0.0.1", hop.port, helo="gw.test", timeout=5.0, tls="none", verify=False, ca_file=None
        )
        try:
            assert other.protocol is not None and _PipelineReader.of(other, other.protocol) is not reader
        finally:
            other.close()
    finally:
        conn.close()


async def test_copies_on_one_connection_schedule_no_timer_per_reply(hop: Hop, monkeypatch) -> None:
    loop = asyncio.get_running_loop()
    scheduled: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when, callback, *args, context=None):  # type: ignore[no-untyped-def]
        if getattr(callback, "__name__", "") == "_expire":
            scheduled.append(when)
        return call_at(when, callback, *args, context=context)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    results = await _deliver(
        hop, [_copy(f"r{i}@example.net") for i in range(20)], pipelining=True, timeout=30.0
    )
    assert [r.status for r in results] == ["sent"] * 20 and hop.connections == 1
    assert len(scheduled) == 1  # 20 transactions, 40 waits for replies: one timer
