"""The delivery service: claims due recipients from the spool, runs the processing phases in the
worker processes, hands each copy to its egress, records every result and schedules retries.

Per recipient: ``queued`` -> ``processing`` (leased) -> ``delivered`` | ``deferred`` (next attempt
on an exponential schedule) | ``bounced`` | ``expired`` (deferred past ``spool.lifetime``:
bounced with 4.4.7) | ``failed`` (processing failed ``spool.max_plugin_attempts`` times) |
``discarded`` (a ``Discard`` verdict). Every result is committed to the spool first, then
emitted as an event and logged Postfix-style, so nothing is ever dropped without a trace.

Crash safety: results are committed only after the next hop accepted the copy, and on start
everything left in ``processing`` is queued again, so a ``kill -9`` at any moment means at
worst a duplicate, never a loss.

Idle costs nothing (issue 17 item 4): the scheduler sleeps until an enqueue or a finished message
wakes it, or the earliest deferred recipient is due; it does not re-read the queue on a timer.
Every ``[spool] poll_interval`` it only asks the spool whether another process changed the queue
(SQLite: ``PRAGMA data_version``, no query of the queue; PostgreSQL: always yes, so a node
claims other nodes' mail and expired leases within that interval). A message enqueued while a
slot is free is handed over in its enqueue transaction (:meth:`DeliveryService.reserve`), not claimed.

Database outages (PostgreSQL down or restarting): a failed claim pauses claiming (and, once the
database answers, hands back the rows it may have leased after all: its COMMIT can have happened
with the reply lost), and a failed result commit keeps the results in memory and retries them, both with backoff (``RETRY_MIN`` to
``RETRY_MAX`` seconds), logged once when it starts failing and once when it works again. A retried
result carries the same event keys (``origin``), so a COMMIT whose reply was lost stores no event twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pipeline.chain.processing import CopyResult, final_headers
from pipeline.chain.runner import Chain
from pipeline.config import Config
from pipeline.contract.context import Event
from pipeline.contract.verdicts import Discard, Reject, TempFail
from pipeline.contract.vocabulary import EventType, RecipientState
from pipeline.delivery.notices import NOTICE_STATES, BounceNotices
from pipeline.delivery.workers import WorkerPool
from pipeline.egress.base import Copy, DeliveryResult
from pipeline.egress.pools import pool_for
from pipeline.egress.resolver import Resolver
from pipeline.egress.router import EgressRouter, UnknownEgress
from pipeline.events.store import new_origins
from pipeline.ports import (
    EventSink,
    LatencyMetrics,
    Metrics,
    QueuedMessage,
    RecipientOutcome,
    ResultRecorder,
    Spool,
)

log = logging.getLogger("smtpgate.delivery")

STATUS_WORD = {
    RecipientState.DELIVERED: "sent",
    RecipientState.DEFERRED: "deferred",
    RecipientState.BOUNCED: "bounced",
    RecipientState.EXPIRED: "expired",
    RecipientState.FAILED: "failed",
    RecipientState.DISCARDED: "discarded",
}
"""Postfix's ``status=`` word in the log line of each result."""

EVENT_OF_STATE = {state: EventType(state.value) for state in STATUS_WORD}
"""The event type of each result state (same values): a dict read, not an enum look-up by value per event."""

RETRY_MIN = 0.25
RETRY_MAX = 5.0
"""Backoff (seconds) between retries of a failed claim or result commit: doubling from the first to the last."""


def copy_logs(copies: Sequence[CopyResult]) -> dict[str, dict[str, Any]]:
    """Recipient -> :func:`~pipeline.chain.processing.copy_log` of its copy (the message log's trace and
    final headers). Copies no plugin changed per recipient are one bytes object (the worker's
    serialisation is cached and pickled once): their headers are read once, not once per recipient."""
    headers: dict[int, tuple[bytes, list[list[str]]]] = {}
    out: dict[str, dict[str, Any]] = {}
    for c in copies:
        data = c.data
        if data is None:
            out[c.recipient] = {"trace": c.trace}
            continue
        hit = headers.get(id(data))
        if hit is None or hit[0] is not data:
            hit = headers[id(data)] = (data, final_headers(data))
        out[c.recipient] = {"trace": c.trace, "headers": hit[1]}
    return out


class Wake:
    """An :class:`asyncio.Event` for its one waiter (the scheduler loop), whose wait with a timeout
    costs a future and a timer. Why (issue 17, main process per message): the loop waits after every
    finished message and enqueue, and ``asyncio.wait_for(event.wait(), t)`` wrapped each wait in a
    task with its own coroutine, callbacks and cancellation."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[bool] | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, timeout: float) -> bool:
        """Whether it was set (``True``) before ``timeout`` seconds passed (``False``)."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(max(0.0, timeout), _timed_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            if self._waiter is waiter:
                self._waiter = None


def _timed_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Outage:
    """One kind of database work failing: logged when it starts failing and when every caller that
    failed has succeeded again, never per attempt (an outage would otherwise log a line per message
    per retry). ``key``: who is retrying (the claim loop, a message's results)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self.since = 0.0
        self._failing: set[str] = set()

    def failed(self, key: str, exc: BaseException, attempt: int) -> float:
        """Count a failure; the backoff before attempt ``attempt + 1``."""
        if not self._failing:
            self.since = time.monotonic()
            log.error("%s failed (%s: %s); retrying with backoff, logged again when it works",
                      self.what, type(exc).__name__, str(exc).strip()[:300])
        self._failing.add(key)
        self.failures += 1
        return min(RETRY_MAX, RETRY_MIN * 2 ** max(0, attempt - 1))

    def ok(self, key: str) -> None:
        if key in self._failing:
            self._failing.discard(key)
            if not self._failing:
                log.warning("%s works again after %d failed attempt(s) in %.1f s",
                            self.what, self.failures, time.monotonic() - self.since)
                self.failures = 0


class DeliveryService:
    """Long-running service (see :class:`pipeline.app.gateway.Service`).

    It gets its ports from the composition root: the :class:`Spool` it claims from and records
    into, the :class:`EventSink` results go to, the chain (inline mode) and the plugin classes
    the worker processes rebuild it from, and the bounce notice policy.
    """

    name = "delivery"

    def __init__(
        self,
        config: Config,
        spool: Spool,
        events: EventSink,
        chain: Chain,
        notices: BounceNotices,
        *,
        extra_plugins: Sequence[Any] = (),
        workers: int | None = None,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
        metrics: LatencyMetrics | None = None,
        results: ResultRecorder | None = None,
    ) -> None:
        self.config = config
        self.results = results  # set: results and their events commit together (else two commits)
        self.settings = config.spool
        self.spool = spool
        self.events = events
        self.notices = notices
        self.clock = clock
        self.router = EgressRouter(self.config, resolver)
        n = self.settings.workers if workers is None else workers
        self.pool = WorkerPool(self.config, n, chain, list(extra_plugins))
        self.pool.metrics = metrics  # plugin latencies measured in the workers
        self.metrics = metrics
        self._wake = Wake()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reserved = 0  # slots promised to enqueues not yet committed (reserve/claimed/cancel)
        self._more = True  # the queue may hold claimable work not yet claimed: a claim pass is due
        # _idle waits with a slot free: a finished message changes nothing it waits for (_finished)
        self._parked_free = False
        self._due: float | None = None  # the earliest deferred recipient's next attempt, as last known
        self._early: float | None = None  # the earliest retry recorded while a next_due query ran
        self._tasks: dict[asyncio.Task[None], QueuedMessage] = {}
        self._held: set[tuple[str, str]] = set()  # (queue_id, recipient) claimed and not yet recorded
        self._copy_logs: dict[str, dict[str, dict[str, Any]]] = {}  # queue id -> recipient -> copy_log()
        self._runner: asyncio.Task[None] | None = None
        self._catching_up: asyncio.Task[None] | None = None  # storing the previous run's leftover events
        self._stopping = False
        self._claims = Outage("claiming from the spool")
        self._results = Outage("recording delivery results")
        self._wire_shaping(metrics)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        spool = self.spool
        resumed = await asyncio.to_thread(spool.recover)
        if resumed:
            log.warning("resumed %d recipient(s) left in processing by the previous run", resumed)
        if self.results is not None:  # beside delivery, not before it: a locked events.db holds nothing back
            self._catching_up = asyncio.create_task(self._store_leftover_events(self.results), name="event-catch-up")
        self._loop = asyncio.get_running_loop()
        spool.add_listener(self.wakeup)
        await self.pool.start()
        self._stopping = False
        self._more = True  # a claim pass first: what a previous run left is due
        spool.set_claimer(self)
        self._runner = asyncio.create_task(self._run(), name="delivery-scheduler")

    async def _store_leftover_events(self, results: ResultRecorder) -> None:
        """Events a crash left committed with their results, stored in the event store (order is
        the recorder's: later results' events follow them)."""
        try:
            drained = await results.drain()
        except Exception:  # the recorder retries them on its own; this only reports
            log.exception("storing events left by the previous run failed; retried with the next results")
            return
        if drained:
            log.warning("stored %d event(s) committed with their results before a crash", drained)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let messages in hand finish for ``grace`` seconds, then hand the rest back."""
        self._stopping = True
        if self._catching_up is not None:
            self._catching_up.cancel()
            await asyncio.gather(self._catching_up, return_exceptions=True)
            self._catching_up = None
        self._wake.set()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._tasks.clear()  # all done: those cancelled before their first step never took themselves out
        await self.pool.close()
        await self.router.close()

    def wakeup(self) -> None:
        """New work may be due (an enqueue, a finished message, a retry from the API's thread)."""
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            self._poke()
        elif not loop.is_closed():  # asyncio.Event is not thread-safe
            loop.call_soon_threadsafe(self._poke)

    def _poke(self) -> None:
        self._more = True
        self._wake.set()

    # -- hand-over at enqueue (pipeline.ports.EnqueueClaimer) ------------------------------

    def _free(self) -> int:
        return self.settings.max_in_flight - len(self._tasks) - self._reserved

    def reserve(self, recipients: Sequence[str], not_before: float) -> float | None:
        """Take a message being enqueued when a slot is free and it is due now and not held back by
        shaping: it is committed already leased to us, with no claim query and no second commit."""
        if self._stopping or self._runner is None or self._free() <= 0 or not_before > self.clock():
            return None
        hold = self._hold()
        if hold and any(r.rpartition("@")[2].lower() in hold for r in recipients):
            return None
        self._reserved += 1
        return self.settings.lease

    def claimed(self, messages: list[QueuedMessage]) -> None:
        """Reserved messages committed ``processing``: deliver them as a claim's. Once stopping,
        they stay leased in the spool and ``recover`` queues them at the next start."""
        self._reserved -= len(messages)
        if self._stopping:
            return
        for msg in messages:
            self._start(msg)

    def cancel(self, n: int) -> None:
        self._reserved -= n
        self._wake.set()  # slots free again

    def _start(self, msg: QueuedMessage) -> None:
        self._held.update((msg.queue_id, r) for r in msg.recipients)
        task = asyncio.create_task(self._handle(msg), name=f"deliver-{msg.queue_id}")
        self._tasks[task] = msg  # (it takes itself out at its end: _handle's _finished)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- scheduler ------------------------------------------------------------------------

    async def _run(self) -> None:
        spool = self.spool
        attempt = 0
        unsure: list[float] = []  # lease_until of claims that failed: their COMMIT may have happened
        while not self._stopping:
            await self._idle()
            if self._stopping:
                break
            self._more = False  # an enqueue from now on sets it again
            free = self._free()
            claimed: list[QueuedMessage] = []
            try:
                if unsure:
                    released = await asyncio.to_thread(spool.release_leases, list(unsure))
                    unsure.clear()
                    if released:
                        log.warning("handed back %d recipient(s) leased by a claim whose reply was lost", released)
                now = self.clock()
                try:
                    claimed = await asyncio.to_thread(
                        spool.claim, free, self.settings.lease, now, frozenset(self._held), self._hold()
                    )
                except Exception:
                    unsure.append(now + self.settings.lease)  # the lease_until that claim set, if it did
                    raise
                if len(claimed) < free:
                    self._early = None
                    due = await asyncio.to_thread(spool.next_due, self._hold())
                    early = self._early  # a retry committed while the query ran may be missing from it
                    self._due = due if early is None else early if due is None else min(due, early)
            except Exception as exc:  # a database away or locked must pause claiming, never end it
                self._more = True
                attempt += 1
                await asyncio.sleep(self._claims.failed("claim", exc, attempt))
                continue
            attempt = 0
            self._claims.ok("claim")
            for msg in claimed:
                self._start(msg)
            if claimed and len(claimed) >= free:
                self._more = True  # the queue may hold more than the slots took

    async def _idle(self) -> None:
        """Return when a claim pass is due: woken with work (``_more``) or the earliest deferred
        recipient due, and a slot free. Meanwhile no queue query: every ``poll_interval`` only
        :meth:`Spool.changed_elsewhere` (another process changed the queue)."""
        while not self._stopping:
            free = self._free() > 0
            due = self._due
            now = self.clock()
            if free and (self._more or (due is not None and due <= now)):
                return
            timeout = self.settings.poll_interval
            if free and due is not None:
                timeout = min(timeout, due - now)
            self._wake.clear()
            self._parked_free = free
            try:
                woken = await self._wake.wait(timeout)
            finally:
                self._parked_free = False
            if woken:
                continue  # woken: look again (a finished message, an enqueue, a new due time)
            if due is None or due > self.clock():  # the poll tick, not the due time
                try:
                    if self.spool.changed_elsewhere():
                        self._more = True
                except Exception:  # the claim pass will find out, and back off
                    self._more = True

    def _finished(self) -> None:
        """A delivery task's last step, run by the task itself (a done callback cost a loop callback
        per message). A task cancelled before its first step never runs it: :meth:`stop` forgets those."""
        if self._tasks.pop(asyncio.current_task(), None) is None:  # type: ignore[arg-type]
            return  # run_once's, not a slot's
        if not self._parked_free:
            # a slot is free: _idle looks whether anything waits for it (no query). Parked with a
            # slot free already, it waits for work (an enqueue, a retry: they wake it) or the due
            # time (its timeout): one more free slot changes neither, and waking it for nothing
            # cost a loop pass, a future and a timer per message (issue 17).
            self._wake.set()

    async def run_once(self) -> int:
        """Claim and fully handle everything due now (tools and tests); returns messages handled."""
        claimed = await asyncio.to_thread(
            self.spool.claim, self.settings.max_in_flight, self.settings.lease, self.clock()
        )
        await asyncio.gather(*(self._handle(m) for m in claimed))
        return len(claimed)

    async def _handle(self, msg: QueuedMessage) -> None:
        try:
            try:
                outcomes = await self._attempt(msg)
            except asyncio.CancelledError:
                # Shutdown with the message still in hand: give it back untouched.
                self.spool.release(msg.queue_id, msg.recipients)
                raise
            except Exception as exc:  # a bug here must defer the message, never drop it
                log.exception("%s: delivery attempt failed", msg.queue_id)
                outcomes = [self._defer(msg, r, "4.3.0", f"local error: {type(exc).__name__}: {exc}", "none", True)
                            for r in msg.recipients]
            await self._commit(msg, outcomes)
        finally:
            self._held.difference_update((msg.queue_id, r) for r in msg.recipients)
            self._copy_logs.pop(msg.queue_id, None)
            self._finished()

    # -- one attempt ----------------------------------------------------------------------

    async def _attempt(self, msg: QueuedMessage) -> list[RecipientOutcome]:
        late = self._past_deliver_by(msg)
        if late is not None:
            return late
        try:
            copies = await self.pool.process(msg.context, msg.data, msg.mail_from, msg.recipients)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("%s: processing failed: %s: %s", msg.queue_id, type(exc).__name__, exc)
            reply = f"451 4.3.0 processing failed: {type(exc).__name__}: {exc}"
            return [self._defer(msg, r, "4.3.0", reply, "none", True) for r in msg.recipients]
        outcomes: dict[str, RecipientOutcome] = {}
        to_send: list[Copy] = []
        # for the message log: each copy's processing trace and final headers, carried by its result event
        self._copy_logs[msg.queue_id] = copy_logs(copies)
        pool, require_tls = self._pool_of(msg), msg.context.get("require_tls")  # the message's, for every copy
        for c in copies:
            if c.recipient not in msg.attempts or c.recipient in outcomes:
                continue
            out = self._verdict_outcome(msg, c)
            if out is not None:
                outcomes[c.recipient] = out
            else:
                to_send.append(Copy(msg.queue_id, c.recipient, c.mail_from, c.data or b"", pool, require_tls, c.crlf))
        sending = {c.recipient for c in to_send}  # a set: N recipients cost N look-ups, not N * N
        for r in msg.recipients:
            if r not in outcomes and r not in sending:
                outcomes[r] = self._defer(msg, r, "4.3.0", "451 4.3.0 processing produced no copy", "none", True)
        if to_send:
            for res in await self._deliver(msg, to_send):
                outcomes[res.recipient] = self._result_outcome(msg, res)
        return [outcomes[r] for r in msg.recipients if r in outcomes]

    def _past_deliver_by(self, msg: QueuedMessage) -> list[RecipientOutcome] | None:
        """Every recipient ``expired`` when the message's deliver-by time has passed, else ``None``.

        Checked before each attempt, not only after a failed one: a copy first tried after its
        deadline (held by ``not_before``, a suspended destination, a full queue) must not go out
        late. It is not processed or sent, and uses no attempt; the result is a 4.4.7 expiry with
        its event and sender notice, as for ``spool.lifetime``.
        """
        by = msg.context.get("deliver_by")
        now = self.clock()
        if not by or now < float(by):
            return None
        late = now - float(by)
        reply = f"message not delivered by its deliver-by time ({late:.0f} s ago); not attempted"
        return [
            RecipientOutcome(msg.queue_id, r, RecipientState.EXPIRED, msg.attempts.get(r, 0), "4.4.7", reply, "none",
                             plugin_failures=msg.plugin_failures.get(r, 0))
            for r in msg.recipients
        ]

    def _verdict_outcome(self, msg: QueuedMessage, c: CopyResult) -> RecipientOutcome | None:
        v = c.verdict
        attempts = msg.attempts[c.recipient] + 1
        if isinstance(v, Reject):
            return RecipientOutcome(msg.queue_id, c.recipient, RecipientState.BOUNCED, attempts, v.enhanced, v.reply())
        if isinstance(v, Discard):
            return RecipientOutcome(
                msg.queue_id, c.recipient, RecipientState.DISCARDED, attempts, "2.0.0", f"discarded: {v.reason}"
            )
        if isinstance(v, TempFail):
            return self._defer(msg, c.recipient, v.enhanced, v.reply(), "none", True)
        if c.data is None:
            return self._defer(msg, c.recipient, "4.3.0", "451 4.3.0 processing produced no copy", "none", True)
        return None

    async def _deliver(self, msg: QueuedMessage, copies: list[Copy]) -> list[DeliveryResult]:
        try:
            egress = self.router.get(EgressRouter.name_for(msg.context.get("credential")))
        except UnknownEgress as exc:
            return [DeliveryResult.deferred(c.recipient, "4.3.5", str(exc)) for c in copies]
        return await egress.deliver(copies)

    def _result_outcome(self, msg: QueuedMessage, res: DeliveryResult) -> RecipientOutcome:
        attempts = msg.attempts[res.recipient] + 1
        pf = msg.plugin_failures.get(res.recipient, 0)
        # built with the TLS outcome and source address (``dataclasses.replace`` cost twice a construction
        # per recipient); a deferral's outcome is replaced only when they differ from its defaults
        if res.status == "sent":
            return RecipientOutcome(msg.queue_id, res.recipient, RecipientState.DELIVERED, attempts, res.dsn,
                                    res.reply, res.relay, plugin_failures=pf, tls=res.tls, source=res.source)
        if res.status == "bounced":
            return RecipientOutcome(msg.queue_id, res.recipient, RecipientState.BOUNCED, attempts, res.dsn,
                                    res.reply, res.relay, plugin_failures=pf, tls=res.tls, source=res.source)
        out = self._shaped(msg, res) or self._defer(msg, res.recipient, res.dsn, res.reply, res.relay, False)
        if out.tls != res.tls or out.source != res.source:
            out = dataclasses.replace(out, tls=res.tls, source=res.source)
        return out

    def _defer(self, msg: QueuedMessage, rcpt: str, dsn: str, reply: str, relay: str, plugin: bool) -> RecipientOutcome:
        """A temporary failure: retry on the schedule, or fail/expire when out of chances."""
        now = self.clock()
        attempts = msg.attempts.get(rcpt, 0) + 1
        pf = msg.plugin_failures.get(rcpt, 0) + (1 if plugin else 0)
        if plugin and pf >= self.settings.max_plugin_attempts:
            return RecipientOutcome(msg.queue_id, rcpt, RecipientState.FAILED, attempts, "5.3.0",
                                    f"processing failed {pf} times; last: {reply}", relay, plugin_failures=pf)
        deadline = self._deadline(msg)
        if now >= deadline:
            age = now - msg.created_at
            return RecipientOutcome(
                msg.queue_id, rcpt, RecipientState.EXPIRED, attempts, "4.4.7",
                f"message expired after {age:.0f} s in the queue; last: {reply}", relay, plugin_failures=pf,
            )
        delay = min(self.settings.retry_max, self.settings.retry_min * 2 ** (attempts - 1))
        return RecipientOutcome(msg.queue_id, rcpt, RecipientState.DEFERRED, attempts, dsn, reply, relay,
                                min(now + delay, deadline), pf)

    def _deadline(self, msg: QueuedMessage) -> float:
        """When the message expires: ``spool.lifetime`` after arrival, or its deliver-by time if sooner."""
        deadline = msg.created_at + self.settings.lifetime
        if msg.context.get("deliver_by"):  # a dialect's deliver-by time: expire then, not later
            deadline = min(deadline, float(msg.context["deliver_by"]))
        return deadline

    # -- results --------------------------------------------------------------------------

    async def _until_done(self, key: str, work: Callable[[], Awaitable[Any]], failed: Exception | None = None) -> None:
        """Await ``work()`` until it succeeds: a database outage delays a result, never drops it
        (cancelled only at shutdown, when the lease hands the recipients to the next claim).
        ``failed``: the first attempt, made by the caller, raised this (the usual first attempt
        succeeds without this coroutine and the closure it takes)."""
        attempt = 0
        while True:
            if failed is None:
                try:
                    await work()
                except Exception as exc:
                    failed = exc
            if failed is not None:
                attempt += 1
                await asyncio.sleep(self._results.failed(key, failed, attempt))
                failed = None
                continue
            self._results.ok(key)
            return

    async def _commit(self, msg: QueuedMessage, outcomes: list[RecipientOutcome]) -> None:
        # Bounced/expired/failed: the sender's DSN is spooled before the results, so a crash
        # repeats it rather than loses it (pipeline/delivery/notices.py). Only those have one.
        key = msg.queue_id
        if any(o.state in NOTICE_STATES for o in outcomes):
            await self._until_done(key, lambda: self.notices.send(msg, outcomes))
        events = self._events_of(msg, outcomes)
        if self.results is not None:  # results and their events commit together (issue 11 point 3)
            results = self.results
            origins = new_origins(len(events))  # the same keys on every retry: no event twice
            try:  # the first attempt in place: a retry loop (a coroutine and a closure) only once it failed
                await results.record(outcomes, events, origins)
            except Exception as exc:
                await self._until_done(key, lambda: results.record(outcomes, events, origins), exc)
            else:
                self._results.ok(key)
        else:
            await self._until_done(key, lambda: self.spool.record(outcomes))
        self._held.difference_update((msg.queue_id, o.recipient) for o in outcomes)
        retries = [o.next_attempt for o in outcomes if o.state == RecipientState.DEFERRED]
        if retries:  # the scheduler's next wake-up, known without asking the spool
            first = min(retries)
            self._due = first if self._due is None else min(self._due, first)
            self._early = first if self._early is None else min(self._early, first)
            self._wake.set()
        for o, event in zip(outcomes, events, strict=True):
            delay = float(event.data["delay"])
            if o.state == RecipientState.DELIVERED and self.metrics is not None:
                self.metrics.observe("delivery_latency_seconds", delay)
            log_fn = log.warning if o.state in (RecipientState.FAILED, RecipientState.EXPIRED) else log.info
            log_fn(
                "%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, tls=%s, status=%s (%s)",
                msg.queue_id, o.recipient, o.relay, delay, o.dsn, o.tls, STATUS_WORD[o.state], o.reply,
            )
            if self.results is not None:
                continue  # already written with the state
            try:
                await self.events.emit(event)
            except Exception:  # the result is already committed; a failing event sink must not undo it
                log.exception("%s: emitting %s event for %s failed", msg.queue_id, o.state, o.recipient)

    def _events_of(self, msg: QueuedMessage, outcomes: list[RecipientOutcome]) -> list[Event]:
        """One event per result, of the same type, carrying the reply, relay, attempts and delay."""
        ctx = msg.context
        cred = (ctx.get("credential") or {}).get("name")
        now = self.clock()
        copy_logs = self._copy_logs.get(msg.queue_id, {})
        events = []
        for o in outcomes:
            delay = now - msg.created_at
            events.append(Event(
                type=EVENT_OF_STATE.get(o.state) or EventType(o.state),
                queue_id=msg.queue_id,
                recipient=o.recipient,
                credential=cred,
                campaign_id=ctx.get("campaign_id"),
                letter_id=ctx.get("letter_id"),
                tags=tuple(ctx.get("tags") or ()),
                metadata=dict(ctx.get("metadata") or {}),
                data={
                    "dsn": o.dsn,
                    "reply": o.reply,
                    "relay": o.relay,
                    "tls": o.tls,
                    "attempts": o.attempts,
                    "delay": round(delay, 3),
                    **({"next_attempt": o.next_attempt} if o.state == RecipientState.DEFERRED else {}),
                    **({"source": o.source} if o.source else {}),
                    **({"message": logged} if (logged := copy_logs.get(o.recipient)) else {}),
                },
            ))
        return events

    # -- traffic shaping hooks (pipeline/egress/shaping.py, pools.py) -------------------------

    def _wire_shaping(self, metrics: Metrics | None) -> None:
        """Shaping counts into ``/metrics`` and wakes the scheduler when a held site frees up."""
        if metrics is not None:
            self.router.metrics = metrics
        self.router.add_listener(self.wakeup)

    def _hold(self) -> frozenset[str]:
        """Recipient domains not to claim now: every path to their site is suspended, capped or busy."""
        return self.router.held_domains()

    def _pool_of(self, msg: QueuedMessage) -> str | None:
        return pool_for(self.config.pool_selection, msg.context)

    def _shaped(self, msg: QueuedMessage, res: DeliveryResult) -> RecipientOutcome | None:
        """A copy shaping held back (no attempt used) or a throttling reply (retried when the site reopens)."""
        if res.retry_at is None:
            return None
        deadline = self._deadline(msg)
        if res.postponed:
            if self.clock() >= deadline:
                return None  # out of time: expires as any deferral would
            return RecipientOutcome(
                msg.queue_id, res.recipient, RecipientState.DEFERRED, msg.attempts.get(res.recipient, 0), res.dsn,
                res.reply, res.relay, min(res.retry_at, deadline), msg.plugin_failures.get(res.recipient, 0),
            )
        out = self._defer(msg, res.recipient, res.dsn, res.reply, res.relay, False)
        if out.state == RecipientState.DEFERRED:
            out = dataclasses.replace(out, next_attempt=min(max(out.next_attempt, res.retry_at), deadline))
        return out
