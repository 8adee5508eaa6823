"""Events: the durable record of what happened to each copy (accepted, delivered, deferred,
bounced, expired, failed, discarded, opened, clicked, unsubscribed, complained), and what is
derived from it: statistics, webhooks and the suppression list (stoplist).

:class:`~pipeline.ports.EventStore` is the interface (as :class:`~pipeline.ports.Spool` is for
the spool); :class:`~pipeline.events.sqlite.SqliteEventStore` is the embedded backend;
:class:`EventRecorder` is the event sink every stage is handed. Plugins see the stoplist only as
the ``env.suppression`` port, which the composition root opens with
:func:`open_suppression_list`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.events.backlog import EventBacklog
from pipeline.events.machine import MachineDetector
from pipeline.events.messages import MessageLogReader, SqliteMessageLog
from pipeline.events.sqlite import (
    GLOBAL_SCOPE,
    HARD_BOUNCE_REASON,
    SCHEMA,
    SqliteEventStore,
    StoredEvent,
    Suppressed,
    SuppressionPolicy,
    normalize_address,
)
from pipeline.events.store import EventStoreBase, is_suppressed, suppression_reason
from pipeline.events.webhooks import webhook_urls
from pipeline.ports import EventStore, Metrics, WebhookWaker
from pipeline.ports import SuppressionList as SuppressionListPort
from pipeline.storage.health import unreachable
from pipeline.storage.sqlite import open_sqlite
from pipeline.toolkit.stoplist import STOPLIST_REPLY
from pipeline.toolkit.verp import VerpToken, parse_verp, recipient_hash, verp_local_part

log = logging.getLogger("smtpgate.events")

class _Held(enum.Enum):
    """What the emitter's store step returns for an event it held for later."""

    HELD = 0


_HELD = _Held.HELD

EVENT_TYPES = tuple(EventType)
"""Known event types; metrics label anything else as ``other`` so label values stay bounded."""

_COUNTED = {str(t): f"events_total:{t}" for t in EVENT_TYPES}
"""Event type -> its counter's key (a type's str or its enum member: equal hashes), made once: the
recorder counted every event with a tuple scan and a format."""



def open_event_store(config: Config) -> EventStoreBase:
    """The gateway's event store with the configured suppression policy: PostgreSQL when
    ``[storage] url`` is set, else ``<data_dir>/events.db``."""
    s = config.suppression
    policy = SuppressionPolicy(s.scope, s.hard_bounces, s.unsubscribes, s.complaints)
    if config.storage.url is not None:
        from pipeline.events.postgres import PostgresEventStore  # psycopg is loaded only when used

        return PostgresEventStore(config.storage.url, policy, pool_size=config.storage.pool_size)
    return SqliteEventStore(config.data_dir / "events.db", policy)


def open_message_log(config: Config, store: EventStoreBase | None = None) -> MessageLogReader:
    """The message log: ``[storage] url``'s shared tables (read through ``store`` when given, else a
    store opened for it and closed with the log), else ``events.db`` on a read connection of its own."""
    if config.storage.url is None:
        return SqliteMessageLog(config.data_dir / "events.db")
    if store is not None:
        return MessageLogReader.on_store(store)
    from pipeline.events.postgres import PostgresEventStore

    own = PostgresEventStore(config.storage.url, pool_size=2)
    return MessageLogReader.on_store(own, close=own.close)


def has_event_store(config: Config) -> bool:
    """Whether there is an event store (and message log) to read: a read-only command must not create
    ``events.db``; with ``[storage] url`` the shared one is always there."""
    return config.storage.url is not None or (config.data_dir / "events.db").is_file()


class SuppressionList:
    """Read-only view of the stoplist for admission (one indexed look-up per RCPT)."""

    def __init__(self, path: Path) -> None:
        self._conn = open_sqlite(path)
        self._conn.executescript(SCHEMA)

    def _fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """One read in autocommit mode: it sees every commit made before it, by any process."""
        return self._conn.execute(sql, args).fetchall()

    def contains(self, address: str, credential: str | None = None) -> bool:
        return is_suppressed(self._fetch, address, credential)

    def reason(self, address: str, credential: str | None = None) -> str | None:
        """Why the address is suppressed (a hard bounce wins: see :func:`suppression_reason`)."""
        return suppression_reason(self._fetch, address, credential)

    async def reason_async(self, address: str, credential: str | None = None) -> str | None:
        """A local indexed read (microseconds, the WAL file never waits on a writer): done in place."""
        return self.reason(address, credential)

    def close(self) -> None:
        self._conn.close()


def open_suppression_list(where: Path | Config) -> SuppressionListPort:
    """The stoplist of a gateway: given its config, wherever ``[storage]`` keeps it; given a data
    directory, that directory's ``events.db``."""
    if isinstance(where, Config):
        if where.storage.url is not None:
            from pipeline.events.postgres import PostgresSuppressionList

            return PostgresSuppressionList(where.storage.url)
        where = where.data_dir
    return SuppressionList(Path(where) / "events.db")


class EventEmitter:
    """The :class:`~pipeline.ports.EventSink` the composition root hands to every stage.

    ``emit`` stores the event with its webhook deliveries and suppression, counts it, wakes the
    webhook sender, then hands it to the ``on_event`` plugins (``after``). It gets ports, not
    the gateway: the store, the counters, where stored credentials' webhook URLs come from.
    """

    def __init__(
        self,
        store: EventStore,
        config: Config,
        metrics: Metrics,
        *,
        credential_webhooks: Callable[[str], Iterable[str]] | None = None,
        api_webhooks: Callable[[str | None, str], Iterable[str]] | None = None,
        after: Callable[[Event], Awaitable[None]] | None = None,
        webhooks_stamp: Callable[[], object | None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.credential_webhooks = credential_webhooks
        self.api_webhooks = api_webhooks  # endpoints added over the API: (credential, event type) -> URLs
        # a value equal while neither source above can change (both read one SQLite file: its commit
        # stamp, pipeline/accounts/store.py), None when unknown; answers are cached while it holds
        self.webhooks_stamp = webhooks_stamp
        self._urls_stamp: object | None = None
        self._urls: dict[tuple[str | None, str], tuple[str, ...]] = {}
        self.after = after
        self.webhook_senders: list[WebhookWaker] = []
        # set by the composition root: events the database could not take (it was away) wait there
        self.backlog: EventBacklog | None = None

    async def emit(self, event: Event, *, strict: bool = False, origin: str | None = None) -> None:
        """Record, then ``on_event`` plugins. A store failure is logged, not raised, unless ``strict``.
        ``origin``: a unique key; an event already stored under it is not stored again. An event held
        for later (the database is away) reaches the plugins when it is written, not now."""
        if await self._store(event, strict, origin) is _HELD:
            return
        await self._after(event)

    async def _after(self, event: Event) -> None:
        """The ``on_event`` plugins, without the message log's summary (headers, trace: not for plugins)."""
        if self.after is not None:
            if "message" in event.data:
                event = dataclasses.replace(event, data={k: v for k, v in event.data.items() if k != "message"})
            await self.after(event)

    async def record(self, event: Event, *, strict: bool = False, origin: str | None = None) -> int | None:
        """Store an event with its webhook deliveries and suppression, count it, wake the sender.

        A store failure is logged and ``None`` returned (a delivered message must not be retried
        because its event could not be written); ``strict=True`` raises it instead, unlogged and
        uncounted: the caller answers for it (a retry would otherwise log and count each attempt).
        With a backlog, an event the database could not take because it is away is held and
        written when it is back (``None`` here).
        """
        stored = await self._store(event, strict, origin)
        return None if isinstance(stored, _Held) else stored

    async def _store(self, event: Event, strict: bool, origin: str | None) -> int | None | _Held:
        try:
            urls = self.webhook_urls_for(event)
            event_id = await self.store.record(event, urls, origin)
        except Exception as exc:
            if strict:
                raise
            if self.backlog is not None and unreachable(exc):
                # the database is away (logged once by pipeline.storage.health): write it when it is back
                self.backlog.hold(event, origin or uuid.uuid4().hex)
                return _HELD
            self._count(event)
            self.metrics["event_store_errors_total"] += 1
            log.error("event %s queue_id=%s not stored: %s", event.type, event.queue_id or "-", exc)
            return None
        self._count(event)
        self._wake(urls)
        return event_id

    def webhook_urls_for(self, event: Event) -> list[str]:
        """Where this event is POSTed: the global URLs and its credential's (filtered by event type),
        then the endpoints added over the API that want it.

        Why cached (issue 17, main process per message): each look-up asked both stores whether
        another connection had committed (``PRAGMA data_version``, about 20 us each). With a
        ``webhooks_stamp``, answers per (credential, event type) serve while the stamp is unchanged;
        it is read before the answer is computed, so a change committed meanwhile is asked about at
        the next look-up. A change by any process is seen at the next event, as before."""
        probe = self.webhooks_stamp
        stamp = probe() if probe is not None else None
        if stamp is None:
            return self._webhook_urls(event)[0]
        cache = self._urls
        if stamp != self._urls_stamp:
            cache = self._urls = {}  # an answer computed meanwhile for the old stamp goes to the old dict
            self._urls_stamp = stamp
        key = (event.credential, str(event.type))
        hit = cache.get(key)
        if hit is None:
            urls, complete = self._webhook_urls(event)
            if not complete:  # an endpoint store that failed: asked again next time
                return urls
            if len(cache) >= 10_000:  # bounded: credentials x event types
                cache.clear()
            hit = cache[key] = tuple(urls)
        return list(hit)

    def _webhook_urls(self, event: Event) -> tuple[list[str], bool]:
        """The URLs, asked of every source; and whether every source answered."""
        urls = webhook_urls(self.config, event.credential, self.credential_webhooks, event.type)
        if self.api_webhooks is not None:
            try:
                urls = list(dict.fromkeys([*urls, *self.api_webhooks(event.credential, event.type)]))
            except Exception as exc:  # the event itself must still be stored
                log.error("webhook endpoints not read for event %s: %s", event.type, exc)
                return urls, False
        return urls, True

    async def committed(self, event: Event, urls: list[str]) -> None:
        """An event another store's transaction wrote (with its state): count it, wake the webhook
        sender, run the ``on_event`` plugins; what ``emit`` does after its own write."""
        self._count(event)
        self._wake(urls)
        await self._after(event)

    def _count(self, event: Event) -> None:
        self.metrics[_COUNTED.get(event.type, "events_total:other")] += 1

    def _wake(self, urls: list[str]) -> None:
        if urls:
            for sender in self.webhook_senders:
                sender.wake()


__all__ = [
    "EVENT_TYPES",
    "EventEmitter",
    "GLOBAL_SCOPE",
    "HARD_BOUNCE_REASON",
    "STOPLIST_REPLY",
    "EventStore",
    "MachineDetector",
    "SqliteEventStore",
    "StoredEvent",
    "Suppressed",
    "SuppressionList",
    "SuppressionPolicy",
    "VerpToken",
    "normalize_address",
    "has_event_store",
    "open_event_store",
    "open_message_log",
    "open_suppression_list",
    "parse_verp",
    "recipient_hash",
    "verp_local_part",
]
