"""Delivery that costs nothing while there is nothing to do (issue 17 item 4): an idle scheduler
queries no queue, an enqueued message is handed to delivery in its enqueue transaction, and a
queue change made elsewhere (another process, the API's thread) still wakes delivery."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.app.gateway import Gateway
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.delivery.scheduler import DeliveryService, Wake
from pipeline.ports import QueuedMessage
from pipeline.spool.sqlite import SqliteSpool
from tests.support.smtp_sink import EventRecorder, smtp_egress
from tests.test_delivery import FAST, RAW, start_service, stop

HOUR = 3600.0


@pytest.fixture(autouse=True)
def _events() -> Iterator[None]:
    EventRecorder.reset()
    yield
    EventRecorder.reset()


async def enqueue(gw: Gateway, rcpt: str) -> str:
    ctx = MessageContext(message=Message(RAW, "app@example.org", [rcpt]))
    await gw.spool.enqueue(ctx, RAW, [rcpt])
    return ctx.queue_id


def sqlite_spool(gw: Gateway) -> SqliteSpool:
    spool = gw.spool
    assert isinstance(spool, SqliteSpool)
    return spool


def count_ticks(svc: DeliveryService, spool: SqliteSpool, ticks: int) -> asyncio.Event:
    """An event set once the scheduler has asked ``changed_elsewhere`` ``ticks`` times."""
    done, asked, real = asyncio.Event(), [0], spool.changed_elsewhere

    def counted() -> bool:
        asked[0] += 1
        if asked[0] >= ticks:
            done.set()
        return real()

    spool.changed_elsewhere = counted  # type: ignore[method-assign]
    return done


async def test_an_idle_scheduler_makes_no_queue_query_between_poll_ticks(data_dir: Path) -> None:
    gw, svc = await start_service(data_dir, spool={"poll_interval": 0.02})
    spool = sqlite_spool(gw)
    try:
        await enqueue(gw, "first@example.net")  # some work first, then nothing to do
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
        statements: list[str] = []
        spool._conn.set_trace_callback(statements.append)
        await asyncio.wait_for(count_ticks(svc, spool, 25).wait(), 30)
        spool._conn.set_trace_callback(None)
    finally:
        await stop(gw, svc)
    assert statements and set(statements) == {"PRAGMA data_version"}


async def test_an_enqueued_message_is_delivered_without_a_claim_or_a_poll(sinks: Any, data_dir: Path) -> None:
    controller, sink = sinks()
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port), spool={"poll_interval": HOUR})
    spool = sqlite_spool(gw)
    claimed: list[str] = []
    real_claim = spool.claim

    def claim(*args: Any, **kw: Any) -> list[QueuedMessage]:
        got = real_claim(*args, **kw)
        claimed.extend(m.queue_id for m in got)
        return got

    spool.claim = claim  # type: ignore[method-assign]
    try:
        qid = await enqueue(gw, "now@example.net")
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
    finally:
        await stop(gw, svc)
    assert EventRecorder.of("delivered")[0].queue_id == qid and len(sink.messages) == 1
    assert qid not in claimed  # handed over in the enqueue's transaction, never claimed


async def test_a_full_house_leaves_the_message_queued_and_a_freed_slot_claims_it(data_dir: Path) -> None:
    gw, svc = await start_service(data_dir, spool={"poll_interval": HOUR, "max_in_flight": 1})
    try:
        first = await enqueue(gw, "one@example.net")
        second = await enqueue(gw, "two@example.net")
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 2)
        left = gw.spool.count()
    finally:
        await stop(gw, svc)
    assert {e.queue_id for e in EventRecorder.of("delivered")} == {first, second} and left == 0


async def test_a_finished_message_does_not_wake_a_scheduler_waiting_with_a_slot_free(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enqueued messages are handed over in their transaction; their end frees a slot the waiting
    scheduler does not need (one was free already): it stays asleep (no loop pass, future or timer
    per message), and every message is still delivered."""
    woken: list[bool] = []
    real_wait = Wake.wait

    async def wait(self: Wake, timeout: float) -> bool:
        got = await real_wait(self, timeout)
        woken.append(got)
        return got

    monkeypatch.setattr(Wake, "wait", wait)
    gw, svc = await start_service(data_dir, spool={"poll_interval": HOUR})
    try:
        await enqueue(gw, "warm@example.net")
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 1)
        await asyncio.sleep(0)  # the first message's done callback
        woken.clear()
        ids = []
        for i in range(5):
            ids.append(await enqueue(gw, f"r{i}@example.net"))
            await EventRecorder.until(lambda n=i: len(EventRecorder.of("delivered")) == n + 2)
        await asyncio.sleep(0)
        in_flight = svc.in_flight  # each delivery task took itself out at its end
    finally:
        await stop(gw, svc)
    assert in_flight == 0 and svc.in_flight == 0
    assert woken.count(True) <= 1  # at most stop()'s wake-up
    assert set(ids) <= {e.queue_id for e in EventRecorder.of("delivered")}


def deferred_once(sinks: Any) -> Any:
    controller, sink = sinks(replies={"later@example.net": ["451 4.7.1 greylisted"]})
    return controller, sink


async def test_a_retry_from_another_process_is_noticed_without_reading_the_queue(sinks: Any, data_dir: Path) -> None:
    controller, sink = deferred_once(sinks)
    spool_cfg = {**FAST, "poll_interval": 0.05, "retry_min": HOUR, "retry_max": HOUR}
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port), spool=spool_cfg)
    try:
        await enqueue(gw, "later@example.net")
        await EventRecorder.until(lambda: bool(EventRecorder.of("deferred")))
        code = f"from pathlib import Path; from pipeline.spool.sqlite import SqliteSpool; " \
               f"print(SqliteSpool(Path({str(sqlite_spool(gw).path)!r})).retry())"
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True)
        assert out.stdout.strip() == "1"
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
    finally:
        await stop(gw, svc)
    assert len(sink.messages) == 1


async def test_a_retry_through_the_api_thread_wakes_delivery_at_once(sinks: Any, data_dir: Path) -> None:
    controller, sink = deferred_once(sinks)
    spool_cfg = {**FAST, "poll_interval": HOUR, "retry_min": HOUR, "retry_max": HOUR}
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port), spool=spool_cfg)
    try:
        await enqueue(gw, "later@example.net")
        await EventRecorder.until(lambda: bool(EventRecorder.of("deferred")))
        assert await asyncio.to_thread(gw.spool.retry) == 1  # as pipeline/api/app.py calls it
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
    finally:
        await stop(gw, svc)
    assert len(sink.messages) == 1
