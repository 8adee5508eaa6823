"""Recipients' results and the events that describe them, committed in one transaction, in both
backends.

Why (issue 11 point 3): recording a result in the spool and then its event in the event store is
two commits; a node killed between them delivered a copy that has no ``delivered`` event, no
webhook, no hard-bounce suppression (measured on two PostgreSQL nodes with one SIGKILLed: 3 to 24
of 180 copies). When the spool and the event store share one PostgreSQL database, the spool's
transaction writes the events too (:meth:`EventStoreBase.write_event`), and only after the COMMIT
are they counted, the webhook sender woken and the ``on_event`` plugins run. With the SQLite files
(spool.db and events.db cannot share a transaction: ATTACH is not atomic across files in WAL mode),
the events go into an outbox table of spool.db in the result's transaction and are then drained
into events.db, each under a unique ``origin`` key, so a drain repeated after a crash stores
nothing twice (:class:`OutboxResults`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.contract.context import Event, MessageContext
from pipeline.events import EventEmitter
from pipeline.events.encoding import EncodedColumns, EventEncoder
from pipeline.events.sqlite import SqliteEventStore
from pipeline.events.store import EventStoreBase, new_origins
from pipeline.ports import RecipientOutcome
from pipeline.spool.sqlite import SqliteSpool

if TYPE_CHECKING:  # annotations only: importing the PostgreSQL spool loads psycopg (a SQLite gateway never needs it)
    from pipeline.spool.postgres import PostgresSpool

log = logging.getLogger("smtpgate.delivery")


class JointResults:
    """The :class:`~pipeline.ports.ResultRecorder` for a PostgreSQL spool and event store in one database."""

    def __init__(self, spool: PostgresSpool, store: EventStoreBase, emitter: EventEmitter) -> None:
        self.spool = spool
        self.store = store
        self.emitter = emitter

    async def drain(self) -> int:
        """Nothing is ever left over: the events were committed with the results."""
        return 0

    async def record(
        self, outcomes: Sequence[RecipientOutcome], events: Sequence[Event], origins: Sequence[str] | None = None
    ) -> None:
        """``origins``: one unique key per event, the same on every retry of this result, so a retry
        after a COMMIT whose outcome was lost (the connection dropped) stores no event twice."""
        keys = list(origins) if origins is not None else [uuid.uuid4().hex for _ in events]
        items = [(event, self.emitter.webhook_urls_for(event), key) for event, key in zip(events, keys, strict=True)]
        await self.spool.record(outcomes, items, self.store.write_event)
        for event, urls, _ in items:
            try:
                await self.emitter.committed(event, urls)
            except Exception:  # committed already: an on_event plugin's failure must not undo it
                log.exception("%s: on_event for %s of %s failed", event.queue_id, event.type, event.recipient)


class JointAccepts:
    """The :class:`~pipeline.ports.AcceptRecorder` for a PostgreSQL spool and event store in one
    database: a message and its ``accepted`` events (event rows, message log, webhook outbox) commit
    in the enqueue's group-committed transaction, so the ``250`` implies the event."""

    def __init__(self, spool: PostgresSpool, store: EventStoreBase, emitter: EventEmitter) -> None:
        self.spool = spool
        self.store = store
        self.emitter = emitter

    async def enqueue(
        self, ctx: MessageContext, data: bytes, recipients: list[str], events: Sequence[Event], *, inline: bool = False
    ) -> None:
        """``inline`` is a SQLite hint: PostgreSQL commits on the server, the caller always waits."""
        items = [(event, self.emitter.webhook_urls_for(event)) for event in events]
        await self.spool.enqueue(ctx, data, recipients, items, self.store.write_event)

    async def committed(self, event: Event) -> None:
        await self.emitter.committed(event, self.emitter.webhook_urls_for(event))


def event_from_record(rec: dict[str, Any]) -> Event:
    """The :class:`Event` an outbox row holds (``Event.to_record`` as JSON)."""
    return Event(
        type=rec["type"], queue_id=rec.get("queue_id"), recipient=rec.get("recipient"),
        credential=rec.get("credential"), campaign_id=rec.get("campaign_id"), letter_id=rec.get("letter_id"),
        url=rec.get("url"), time=float(rec["time"]), data=dict(rec.get("data") or {}),
        tags=tuple(rec.get("tags") or ()), metadata=dict(rec.get("metadata") or {}),
    )


_Item = tuple[int, str, Event, list[str], EncodedColumns | None]
"""A committed outbox row as the forwarder holds it: ``(outbox id, origin, event, webhook URLs, its
events.db JSON columns as encoded for the outbox, or None when read back from spool.db)``."""

_Encoded = tuple[Event, str, list[str], str, EncodedColumns]
"""An event on its way into the outbox: ``(event, origin, webhook URLs, event JSON, its columns)``."""


def webhook_urls_of(emitter: EventEmitter, events: Sequence[Event]) -> list[list[str]]:
    """Each event's webhook URLs, asked once per credential and event type of the batch (all they
    depend on): a message's N recipients' events cost one look-up (each reads the credential and
    endpoint stores' change counters), not N. Events of one kind share one list (read only)."""
    known: dict[tuple[str | None, str], list[str]] = {}
    out = []
    for event in events:
        kind = (event.credential, str(event.type))
        urls = known.get(kind)
        if urls is None:
            urls = known[kind] = emitter.webhook_urls_for(event)
        out.append(urls)
    return out


def encode_items(events: Sequence[Event], origins: Sequence[str], urls: Sequence[list[str]]) -> list[_Encoded]:
    """The events with their outbox JSON and events.db columns; a summary several events share is
    encoded once (:class:`~pipeline.events.encoding.EventEncoder`)."""
    encoder = EventEncoder()
    out = []
    for event, origin, event_urls in zip(events, origins, urls, strict=True):
        record, columns = encoder.encode(event)
        out.append((event, origin, event_urls, record, columns))
    return out

RETRY_MIN = 0.25
RETRY_MAX = 5.0
"""Backoff (seconds) between forwarding attempts while events.db refuses them."""

RESULT_LINGER = 0.05
"""Seconds a result commit may wait in spool.db's writer for another write (the next enqueue) to
share its commit (:meth:`SqliteSpool.record`); the default of :class:`OutboxResults`."""


class OutboxResults:
    """The :class:`~pipeline.ports.ResultRecorder` for the SQLite files, and (:meth:`accepts`) their
    :class:`~pipeline.ports.AcceptRecorder`: results and ``accepted`` events commit with the state
    they describe in spool.db (``event_outbox``), then move to events.db idempotently.

    Why batched (issue 17 item 4): forwarding used to cost three round trips per message and
    event kind (read the outbox, store the events, delete the rows). Here each commit hands its rows'
    ids back in the event loop (``on_commit``); one forwarder task moves everything pending (many
    messages' accepted and delivered events) into events.db in one operation of its writer, in
    outbox id order (accepted before delivered, event ids increasing), and the rows are forgotten
    in spool.db's next transaction (:meth:`SqliteSpool.forget_outbox_later`), not one of their own.
    Only then are the events counted, the webhook sender woken and ``on_event`` run, once, by the
    process that stored them. Events nobody waits for (``accepted`` ones, and results' unless
    ``wait_results``) linger up to ``linger`` seconds to share one events.db commit. Rows committed
    before this object existed (a crash, another process) are read from spool.db on the first round.

    Why results do not wait by default (issue 17, main process per message): their events are
    durable once the results commit (the outbox row; a crash forwards it at the next start), and a
    caller waiting for events.db made every result hurry a round of its own: one events.db commit
    per delivered message at one session. Lingering, a burst of results and accepts shares one
    (measured, one-recipient messages one at a time: events-writer 0.65 -> 0.14 ms per message,
    the whole process 2.0 -> 1.2). Events reach events.db (the message log, webhooks) up to
    ``linger`` later; ``drain`` still forwards everything at once.

    Why results linger too (issue 17, one session): a result's commit waits up to ``result_linger``
    seconds for another write of spool.db (the next message's enqueue) and shares its commit and
    its wake-up of the event loop, instead of costing both alone for every delivered message. Until
    it is committed the copy is ``processing`` in spool.db: a crash meanwhile hands it out again at
    the next start (a duplicate at worst, as a crash between the next hop's ``250`` and the commit
    always did), never loses it (tests/test_crash.py).
    """

    def __init__(self, spool: SqliteSpool, store: SqliteEventStore, emitter: EventEmitter,
                 linger: float = 0.05, *, wait_results: bool = False, result_linger: float | None = None) -> None:
        self.spool = spool
        self.store = store
        self.emitter = emitter
        self.linger = linger
        self.wait_results = wait_results
        self.result_linger = RESULT_LINGER if result_linger is None else result_linger
        self._pending: list[_Item] = []  # committed, not yet forwarded, in id order
        self._from_disk = True  # spool.db may hold rows this object never saw (read them first)
        self._read_upto = 0  # the last id read from spool.db while catching up
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (highest id, resolved once forwarded)
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = 0  # consecutive failed rounds (backoff; logged on the first and on recovery)
        self._forwarded = 0

    # -- the two recorders ------------------------------------------------------------------

    async def record(
        self, outcomes: Sequence[RecipientOutcome], events: Sequence[Event], origins: Sequence[str] | None = None
    ) -> None:
        """Commit results with their events (in spool.db's outbox); return then, or with
        ``wait_results`` once the events are in events.db too (or kept in the outbox for a retry:
        the results are committed either way, and must not be recorded again)."""
        keys = list(origins) if origins is not None else new_origins(len(events))
        items = encode_items(events, keys, webhook_urls_of(self.emitter, events))
        waiter = asyncio.get_running_loop().create_future() if items and self.wait_results else None
        await self.spool.record(outcomes, _rows(items), self._on_commit(items, waiter),
                                linger=0.0 if waiter is not None else self.result_linger)
        if waiter is not None:
            await waiter

    def accepts(self, *, wait: bool = False) -> OutboxAccepts:
        """The accept step's recorder: message and ``accepted`` events in the enqueue's transaction.
        ``wait``: the enqueue returns once the events are in events.db too (the HTTP send API
        promises the message log has the message before its 202); else they follow within ``linger``."""
        return OutboxAccepts(self, wait)

    async def enqueue(self, ctx: MessageContext, data: bytes, recipients: list[str], events: Sequence[Event],
                      wait: bool = False, *, inline: bool = False) -> None:
        items = encode_items(events, new_origins(len(events)), webhook_urls_of(self.emitter, events))
        waiter = asyncio.get_running_loop().create_future() if items and wait else None
        await self.spool.enqueue(ctx, data, recipients, _rows(items), self._on_commit(items, waiter), inline=inline)
        if waiter is not None:
            await waiter

    def _on_commit(self, items: list[_Encoded], waiter: asyncio.Future[None] | None) -> Callable[[list[int]], None]:
        def committed(ids: list[int]) -> None:
            self._pending.extend(
                (i, key, e, urls, columns) for i, (e, key, urls, _, columns) in zip(ids, items, strict=True)
            )
            if waiter is not None:
                self._waiters.append((max(ids), waiter))
                self._hurry.set()
            self._kick()

        return committed

    # -- forwarding -------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event-outbox")

    async def drain(self) -> int:
        """Forward everything committed so far now (rows a crash left included) and forget it in
        spool.db before returning; how many rows were forwarded (events already stored count too).
        Events committed after the call are not waited for: under steady traffic the wait ends."""
        before = self._forwarded
        known = self._pending[-1][0] if self._pending else 0  # outbox ids grow: later ones are newer
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((0, waiter))  # resolved by the next round, which reads spool.db if due
        self._hurry.set()
        self._kick()
        await waiter
        # a round forwards what was pending when it began
        while self._from_disk or (self._pending and self._pending[0][0] <= known):
            if self._failing:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((0, waiter))
            self._hurry.set()
            self._kick()
            await waiter
        await self.spool.flush()
        return self._forwarded - before

    async def close(self) -> None:
        """Forward what is pending (one attempt if events.db refuses: the rows stay in spool.db for
        the next start), then stop; before the stores close."""
        self._closing = True
        self._hurry.set()
        if self._pending or self._from_disk:
            self._kick()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending or self._from_disk or self._waiters:
            if not self._hurry.is_set() and not self._closing:
                timer = loop.call_later(self.linger, self._hurry.set)  # accepted events wait for company
                await self._hurry.wait()
                timer.cancel()
            self._hurry.clear()
            try:
                stored, kept = await self._round()
            except Exception as exc:
                self._release_waiters(None)  # their state is committed: nobody waits for an outage
                stored, kept = [], exc
            if kept is None and self._failing:
                log.warning("events of spool.db's outbox stored again after %d failed attempt(s)", self._failing)
                self._failing = 0
            for event, urls in stored:
                try:
                    await self.emitter.committed(event, urls)
                except Exception:  # stored already: an on_event plugin's failure must not undo it
                    log.exception("%s: on_event for %s of %s failed", event.queue_id, event.type, event.recipient)
            if kept is not None:  # kept in spool.db's outbox: nothing is lost, it is retried
                self._failing += 1
                if self._failing == 1:
                    log.error("events of spool.db's outbox not stored in events.db yet (%s: %s); kept there, "
                              "retrying with backoff", type(kept).__name__, str(kept).strip()[:300])
                if self._closing:
                    return  # the next start forwards them
                await asyncio.sleep(min(RETRY_MAX, RETRY_MIN * 2 ** (self._failing - 1)))
                self._hurry.set()

    async def _round(self) -> tuple[list[tuple[Event, list[str]]], Exception | None]:
        """One events.db transaction for what is pending: the events it stored (to announce) and
        why some were not, or raise when nothing was stored. Whatever was not stored is read from
        spool.db again (from the first such row on, in order), not held in memory: an outage of
        events.db costs no memory, and a message's later events never overtake an earlier one."""
        if self._from_disk:
            items = await self._catch_up()
        else:
            items, self._pending = self._pending, []
        if not items:
            self._release_waiters(None)
            return [], None
        try:
            results = await self.store.record_many([(event, urls, origin) for _, origin, event, urls, _ in items],
                                                   [columns for *_, columns in items])
        except BaseException:
            self._reread_from(items[0][0])
            raise
        done, stored = [], []
        failed: Exception | None = None
        for item, result in zip(items, results, strict=True):
            if isinstance(result, Exception):
                if failed is None:
                    failed = result
                    self._reread_from(item[0])
                continue
            done.append(item[0])
            if result is not None:  # None: stored before (a repeated drain): announced then
                stored.append((item[2], item[3]))
        if done:
            self.spool.forget_outbox_later(done)
        self._forwarded += len(done)
        self._release_waiters(items[-1][0])
        return stored, failed

    def _reread_from(self, first: int) -> None:
        """Forget what memory holds from outbox id ``first`` on: the next rounds read spool.db (rows
        forwarded meanwhile and not yet deleted are stored again as no-ops: their origin)."""
        self._from_disk = True
        self._read_upto = first - 1
        self._pending = []

    async def _catch_up(self, limit: int = 1000) -> list[_Item]:
        """The next rows of spool.db's outbox in id order (what a crash or another process left,
        and what this object was told of meanwhile); once they are exhausted, back to memory."""
        rows = await self.spool.take_outbox(limit, self._read_upto)
        if rows:
            self._read_upto = rows[-1][0]
        if len(rows) < limit:
            self._from_disk = False
        upto = self._read_upto
        self._pending = [item for item in self._pending if item[0] > upto]  # the rest was just read
        return [(i, origin, event_from_record(json.loads(ev)), list(json.loads(urls)), None)
                for i, origin, ev, urls in rows]

    def _release_waiters(self, upto: int | None) -> None:
        """Resolve the waiters whose rows a round took (``None``: every waiter)."""
        keep = []
        for highest, waiter in self._waiters:
            if upto is None or highest <= upto:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append((highest, waiter))
        self._waiters = keep


class OutboxAccepts:
    """:class:`~pipeline.ports.AcceptRecorder` over :class:`OutboxResults` (the SQLite files)."""

    def __init__(self, outbox: OutboxResults, wait: bool) -> None:
        self.outbox = outbox
        self.wait = wait

    async def enqueue(
        self, ctx: MessageContext, data: bytes, recipients: list[str], events: Sequence[Event], *, inline: bool = False
    ) -> None:
        await self.outbox.enqueue(ctx, data, recipients, events, self.wait, inline=inline)

    async def committed(self, event: Event) -> None:
        """Nothing: the forwarder counts, wakes the webhook sender and runs ``on_event`` once it
        has stored the event in events.db."""


def _rows(items: Sequence[_Encoded]) -> list[tuple[str, str, str]]:
    """``event_outbox`` rows: ``(origin, event JSON, webhook URLs JSON)``; a URL list several events
    share is encoded once, and a list seen lately (a gateway has few) not again (:func:`urls_json`)."""
    encoded: dict[int, tuple[list[str], str]] = {}
    rows = []
    for _, key, urls, record, _ in items:
        hit = encoded.get(id(urls))
        if hit is None or hit[0] is not urls:
            hit = encoded[id(urls)] = (urls, urls_json(urls))
        rows.append((key, record, hit[1]))
    return rows


_URLS_JSON: dict[tuple[str, ...], str] = {}


def urls_json(urls: list[str]) -> str:
    """``json.dumps(urls)``, remembered by value: every message's events carry one of a few URL lists
    (often the empty one), and encoding one cost more than the look-up (issue 17, per message)."""
    key = tuple(urls)
    text = _URLS_JSON.get(key)
    if text is None:
        if len(_URLS_JSON) >= 1024:  # bounded: credentials x event kinds, normally
            _URLS_JSON.clear()
        text = _URLS_JSON[key] = json.dumps(urls)
    return text
