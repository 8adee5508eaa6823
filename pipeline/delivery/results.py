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
from collections.abc import Sequence
from typing import Any

from pipeline.contract.context import Event, MessageContext
from pipeline.events import EventEmitter
from pipeline.events.store import EventStoreBase
from pipeline.ports import RecipientOutcome
from pipeline.spool.postgres import PostgresSpool
from pipeline.spool.sqlite import SqliteSpool

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

    async def enqueue(self, ctx: MessageContext, data: bytes, recipients: list[str], events: Sequence[Event]) -> None:
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


class OutboxResults:
    """The :class:`~pipeline.ports.ResultRecorder` for the SQLite files: results and their events
    commit together in spool.db (``event_outbox``), then move to events.db idempotently."""

    def __init__(self, spool: SqliteSpool, store: EventStoreBase, emitter: EventEmitter) -> None:
        self.spool = spool
        self.store = store
        self.emitter = emitter
        self._draining = asyncio.Lock()

    async def record(
        self, outcomes: Sequence[RecipientOutcome], events: Sequence[Event], origins: Sequence[str] | None = None
    ) -> None:
        keys = list(origins) if origins is not None else [uuid.uuid4().hex for _ in events]
        rows = [
            (key, json.dumps(e.to_record(), default=str), json.dumps(self.emitter.webhook_urls_for(e)))
            for e, key in zip(events, keys, strict=True)
        ]
        await self.spool.record(outcomes, rows)
        await self.drain()

    async def drain(self) -> int:
        """Store the outbox's events in events.db (group-committed), then forget them; how many.
        An event that cannot be stored stays in the outbox for the next drain."""
        async with self._draining:
            rows = await self.spool.take_outbox()
            if not rows:
                return 0
            items = [(id_, origin, event_from_record(json.loads(ev)), json.loads(urls)) for id_, origin, ev, urls in rows]
            stored = await asyncio.gather(
                *(self.store.record(event, urls, origin) for _, origin, event, urls in items), return_exceptions=True
            )
            done = [item for item, result in zip(items, stored, strict=True) if not isinstance(result, BaseException)]
            for result in stored:
                if isinstance(result, BaseException):
                    log.error("event from the spool's outbox not stored yet (kept for the next drain): %s", result)
                    break
            await self.spool.forget_outbox([id_ for id_, _, _, _ in done])
        for _, _, event, urls in done:
            try:
                await self.emitter.committed(event, urls)
            except Exception:  # stored already: an on_event plugin's failure must not undo it
                log.exception("%s: on_event for %s of %s failed", event.queue_id, event.type, event.recipient)
        return len(done)
