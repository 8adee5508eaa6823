"""A worker process serves its messages in one task of its event loop (not a loop run per message)
and writes each answer with one ``sendmsg``: what comes back is what the chain gives in process.

Copies of every message in samples/ and the shared corpus made by a worker equal those made by
``run_processing`` in this process (bytes, verdicts, traces). An async hook is still awaited in
the worker, and still timed out; a synchronous hook that overruns is still interrupted; a
callback a hook schedules still runs after its message; answers far larger than the socket's
buffer come back whole, and a write cut short by a signal is finished.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from pipeline import Plugin, hookimpl
from pipeline.chain.driver import make_config
from pipeline.config import ChainSection
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.delivery.workers import HEADER, OK, WorkerPool, _send_frame, build_chain, run_processing
from tests.support import PROCESSING_FEATURES, parseable_messages

pytestmark = pytest.mark.slow  # worker processes

FEATURES = PROCESSING_FEATURES
RCPTS = ["one@example.org", "two@example.org", "three@example.net"]
RAW = b"From: app@example.org\r\nTo: x@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


class AsyncStamp(Plugin):
    """An async hook that really suspends (the loop runs other work meanwhile), then edits."""

    name = "async_stamp"

    @hookimpl
    async def on_transform(self, ctx: Any) -> Any:
        await asyncio.sleep(0.01)
        ctx.message.add_header("X-Async", "awaited")
        return None


class Overrun(Plugin):
    """Overruns the chain's timeout when the message asks: asleep (async) or spinning (sync)."""

    name = "overrun"

    @hookimpl
    def on_personalize(self, ctx: Any) -> Any:
        how = ctx.message.get("X-Overrun")
        if how == "async":
            return asyncio.sleep(60)
        if how == "sync":
            while True:  # only SIGALRM gets it out
                pass
        return None


RAN: list[str] = []


class Schedules(Plugin):
    """Schedules a callback on the running loop; the next message says how many have run."""

    name = "schedules"

    @hookimpl
    def on_personalize(self, ctx: Any) -> Any:
        ctx.message.add_header("X-Callbacks-Ran", str(len(RAN)))
        asyncio.get_running_loop().call_soon(RAN.append, ctx.recipient)
        return None


def config_for(data_dir: Path, **chain: Any) -> Any:
    data_dir.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {
        "gateway": {"data_dir": str(data_dir)},
        "egress": {"type": "null"},
        "tracking": {
            "keys": {"k1": "secret"},
            "base_url": "https://t.example.net",
            "bounce_domain": "bounces.example.net",
        },
        "features": {f: True for f in FEATURES},
    }
    if chain:
        overrides["chain"] = chain
    return make_config(overrides, ChainSection().plugins)


def record_for(raw: bytes, queue_id: str) -> dict[str, Any]:
    return MessageContext(
        message=Message(raw), queue_id=queue_id, features={f: True for f in FEATURES}
    ).to_record()


def outcome(copies: list[Any]) -> list[tuple[Any, ...]]:
    """What a copy is, but the milliseconds each hook took."""
    return [
        (
            c.recipient,
            c.mail_from,
            c.data,
            repr(c.verdict),
            [{k: v for k, v in row.items() if k != "ms"} for row in c.trace],
        )
        for c in copies
    ]


async def test_copies_made_by_a_worker_equal_those_made_in_process_for_every_sample_and_corpus_message(
    data_dir,
):
    config = config_for(data_dir)
    chain = build_chain(config, [])
    pool = WorkerPool(config, 1, build_chain(config, []), [])
    await pool.start()
    try:
        found = parseable_messages()
        assert found
        for i, (name, raw) in enumerate(found):
            record = record_for(raw, f"q{i}")
            got = await pool.process(record, raw, "app@example.com", RCPTS)
            want = await run_processing(chain, record, raw, "app@example.com", RCPTS, [])
            assert outcome(got) == outcome(want), name
            assert any(c.data is not None and c.data != raw for c in got), name  # the chain did edit
    finally:
        await pool.close()


async def test_in_a_worker_an_async_hook_is_awaited_and_one_that_overruns_fails_closed(data_dir):
    config = config_for(data_dir, timeout=0.5)
    plugins = [AsyncStamp, Overrun]
    pool = WorkerPool(config, 1, build_chain(config, plugins), plugins)
    await pool.start()
    try:
        (copy,) = await pool.process(record_for(RAW, "q1"), RAW, "app@example.org", ["a@example.net"])
        assert copy.deliverable
        assert copy.data is not None and b"\r\nX-Async: awaited\r\n" in copy.data
        for how in ("async", "sync"):
            raw = b"X-Overrun: " + how.encode() + b"\r\n" + RAW
            (copy,) = await pool.process(
                record_for(raw, f"q-{how}"), raw, "app@example.org", ["a@example.net"]
            )
            assert not copy.deliverable and copy.data is None, how
            assert [row.get("error") for row in copy.trace if row["plugin"] == "overrun"] == [
                "timed out after 0.5 s"
            ]
        (copy,) = await pool.process(record_for(RAW, "q2"), RAW, "app@example.org", ["a@example.net"])
        assert copy.deliverable  # and the worker serves on
    finally:
        await pool.close()


async def test_in_a_worker_a_callback_a_hook_scheduled_runs_after_its_message(data_dir):
    config = config_for(data_dir)
    plugins = [Schedules]
    pool = WorkerPool(config, 1, build_chain(config, plugins), plugins)
    await pool.start()
    try:
        ran = []
        for i in range(3):
            (copy,) = await pool.process(
                record_for(RAW, f"q{i}"), RAW, "app@example.org", [f"r{i}@example.net"]
            )
            assert copy.data is not None
            ran.append(Message(copy.data).get("X-Callbacks-Ran"))
    finally:
        await pool.close()
    assert ran == ["0", "1", "2"]


async def test_answers_far_larger_than_the_socket_buffer_come_back_whole(data_dir):
    config = config_for(data_dir)
    pool = WorkerPool(config, 1, build_chain(config, []), [])
    await pool.start()
    try:
        raw = RAW.replace(b"hello\r\n", b"".join(b"line %06d of a long body\r\n" % i for i in range(40000)))
        rcpts = [f"r{i}@example.net" for i in range(20)]  # 20 copies of 1 MB: 20 MB in one answer
        copies = await pool.process(record_for(raw, "q1"), raw, "app@example.org", rcpts)
    finally:
        await pool.close()
    assert [c.recipient for c in copies] == rcpts
    assert all(c.data is not None and c.data.endswith(b"line 039999 of a long body\r\n") for c in copies)


class CutShort:
    """A socket whose ``sendmsg`` writes only the first ``n`` bytes (as when a signal interrupts a
    long write); ``sendall`` writes everything."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.wire = bytearray()

    def sendmsg(self, buffers: tuple[bytes, bytes]) -> int:
        data = b"".join(buffers)[: self.n]
        self.wire += data
        return len(data)

    def sendall(self, data: Any) -> None:
        self.wire += bytes(data)


@pytest.mark.parametrize(
    "written", [0, 5, HEADER.size, HEADER.size + 1, HEADER.size + 999, HEADER.size + 1000]
)
def test_a_frame_whose_write_was_cut_short_is_finished(written: int) -> None:
    payload = pickle.dumps(list(range(300)))[:1000].ljust(1000, b"x")
    sock = CutShort(written)
    assert _send_frame(sock, 7, OK, payload)  # type: ignore[arg-type]
    assert bytes(sock.wire) == HEADER.pack(1000, 7, OK) + payload


def test_a_frame_to_a_parent_that_is_gone_says_so() -> None:
    a, b = socket.socketpair()
    b.close()
    try:
        assert not _send_frame(a, 1, OK, b"x" * 100)
    finally:
        a.close()
    assert struct.calcsize("!QQB") == HEADER.size


def test_a_context_rebuilt_from_the_spool_has_a_session_id_of_the_usual_form_new_each_time() -> None:
    record = {**record_for(RAW, "q1"), "peer": ["192.0.2.1", 2525]}
    ids = {MessageContext.from_record(record, Message(RAW)).session.session_id for _ in range(50)}  # type: ignore[union-attr]
    assert len(ids) == 50
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids)
