"""The delivery side's cheaper paths behave as the ones they replace: the scheduler loop's wake-up
(:class:`Wake`, a future and a timer instead of ``wait_for`` and a task), a result commit tried
once in place (retried with the same event keys only when it failed), the outbox rows' URL JSON
remembered by value, the result events' types read from a dict."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_config
from pipeline.contract.context import Event, MessageContext
from pipeline.contract.message import Message
from pipeline.contract.vocabulary import EventType, RecipientState
from pipeline.delivery.results import urls_json
from pipeline.delivery.scheduler import EVENT_OF_STATE, STATUS_WORD, Wake
from pipeline.ports import RecipientOutcome
from tests.support.smtp_sink import FAST_RETRIES, EventRecorder
from tests.support.waiting import wait_for

RAW = b"From: app@example.org\r\nTo: someone@example.net\r\nSubject: test\r\n\r\nHello\r\n"


async def test_wake_returns_at_once_when_set_and_false_after_its_timeout():
    wake = Wake()
    wake.set()
    assert await wake.wait(3600) is True
    wake.clear()
    assert await wake.wait(0.01) is False
    assert await wake.wait(-1) is False  # a due time already past: the next loop turn


async def test_wake_set_during_a_wait_ends_it_and_its_timer():
    wake = Wake()
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(wake.wait(3600))
    await asyncio.sleep(0)
    timers = len(loop._scheduled)  # type: ignore[attr-defined]
    loop.call_soon(wake.set)
    assert await waiting is True
    assert len([t for t in loop._scheduled if not t.cancelled()]) < timers  # type: ignore[attr-defined]
    wake.set()  # no waiter: nothing to resolve
    assert wake.is_set()


async def test_a_cancelled_wait_leaves_the_wake_usable():
    wake = Wake()
    waiting = asyncio.ensure_future(wake.wait(3600))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    wake.set()  # the cancelled waiter is not resolved again
    assert await wake.wait(3600) is True


class FailingOnce:
    """The gateway's result recorder, whose first commit raises as a locked database would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[list[str], list[str]]] = []

    async def drain(self) -> int:
        return int(await self.inner.drain())

    async def record(
        self,
        outcomes: Sequence[RecipientOutcome],
        events: Sequence[Event],
        origins: Sequence[str] | None = None,
    ) -> None:
        self.calls.append(([o.recipient for o in outcomes], list(origins or ())))
        if len(self.calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        await self.inner.record(outcomes, events, origins)


async def test_a_result_commit_that_fails_is_retried_with_the_same_event_keys_and_stored_once(tmp_path: Path):
    EventRecorder.reset()
    config = make_config(
        {"gateway": {"data_dir": str(tmp_path)}, "spool": {**FAST_RETRIES, "bounce_notices": False}}
    )
    gw = Gateway(config, extra_plugins=[EventRecorder])
    svc = gw.delivery_service(workers=0)
    assert svc.results is not None
    flaky = svc.results = FailingOnce(svc.results)
    await svc.start()
    try:
        ctx = MessageContext(message=Message(RAW, "app@example.org", ["a@example.net"]))
        await gw.spool.enqueue(ctx, RAW, ["a@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
        await gw.joint_results().drain()  # type: ignore[union-attr]
    finally:
        await svc.stop(5.0)
        gw.spool.close()
    assert len(flaky.calls) == 2 and flaky.calls[0] == flaky.calls[1]  # same recipients, same origins
    assert len(EventRecorder.of("delivered")) == 1
    assert not svc._results._failing  # the outage is over (logged once each way)
    stored = [e for e in gw.events.events(queue_id=ctx.queue_id) if e.event.type == "delivered"]
    assert len(stored) == 1
    EventRecorder.reset()


def test_remembered_url_list_json_equals_json_dumps_on_generated_lists():
    rng = random.Random(17)
    alphabet = 'abc/:?&="\\é☃\x01 '
    lists = [[]] + [
        [
            "http://" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(1, 4))
        ]
        for _ in range(500)
    ]
    for urls in lists + lists:  # the second time from the cache
        assert urls_json(urls) == json.dumps(urls)


def test_each_result_state_has_the_event_type_of_its_value():
    for state in RecipientState:
        if state in STATUS_WORD:
            assert EVENT_OF_STATE[state] is EventType(state)


async def test_delivery_starts_and_delivers_while_events_db_is_locked(tmp_path: Path):
    """Storing the events a previous run left in spool.db's outbox runs beside delivery, not before
    it: with events.db's write lock held elsewhere (a backup, an operator's sqlite3 shell) for its
    whole busy timeout, the scheduler starts at once and delivers; the events follow once the lock
    is released, each once."""
    config = make_config({"gateway": {"data_dir": str(tmp_path)}, "spool": {**FAST_RETRIES, "bounce_notices": False}})
    gw = Gateway(config)
    outbox = gw.joint_results()
    assert outbox is not None
    ctx = MessageContext(message=Message(RAW, "app@example.org", ["a@example.net"]))
    accepted = [Event("accepted", queue_id=ctx.queue_id, recipient="a@example.net")]
    await gw.joint_accepts().enqueue(ctx, RAW, ["a@example.net"], accepted)  # its event: in the outbox
    hold = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    hold.execute("BEGIN IMMEDIATE")
    svc = gw.delivery_service(workers=0)
    try:
        await asyncio.wait_for(svc.start(), 10)  # not the 30 s of events.db's busy timeout
        await wait_for(lambda: not gw.spool.count(), 10, "delivery with events.db locked")
        assert len(list((tmp_path / "maildir" / "new").iterdir())) == 1
        assert gw.events.events() == []  # still waiting for the lock
        hold.execute("ROLLBACK")
        await wait_for(lambda: len(gw.events.events()) >= 2, 20, "the events once events.db is free")
    finally:
        if hold.in_transaction:
            hold.execute("ROLLBACK")
        hold.close()
        await svc.stop(5.0)
        await outbox.close()
        gw.spool.close()
    assert sorted(e.event.type for e in gw.events.events(queue_id=ctx.queue_id)) == ["accepted", "delivered"]
