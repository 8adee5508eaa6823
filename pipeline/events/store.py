"""What both event-store backends share: the record shapes, the suppression policy, and every
query, written once against three primitives a backend supplies (read, write, one transaction).

Why one body of SQL: the event store, webhook outbox and stoplist must behave the same on the
embedded SQLite file and on a PostgreSQL several nodes share, and the tests run against both
(``backend`` fixture). SQL here uses ``?`` placeholders and syntax both engines accept
(``RETURNING``, ``ON CONFLICT DO NOTHING``); the PostgreSQL backend turns ``?`` into ``%s``.
An event, its webhook deliveries and the suppression it implies are written in one transaction;
concurrent ``record`` calls share one commit (:class:`~pipeline.storage.batching.GroupCommit`).
"""

from __future__ import annotations

import abc
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.events.bounces import classify_status
from pipeline.events.encoding import EncodedColumns, TxMemo, dumps_compact
from pipeline.events.messages import log_tables, write_message_log
from pipeline.events.metadata import store_meta
from pipeline.storage.batching import GroupCommit
from pipeline.storage.tx import Tx

R = TypeVar("R")


GLOBAL_SCOPE = ""
"""The suppression scope that applies to every credential."""


def normalize_address(address: str) -> str:
    """The form addresses are stored and compared in: no brackets, no spaces, lower case."""
    return address.strip().strip("<>").strip().lower()


def new_origins(n: int) -> list[str]:
    """``n`` unique event origins (32 hex digits, as ``uuid4().hex`` was): the time in milliseconds
    (12 digits), then 80 bits from a counter that starts at a random value in each process (drawn
    from ``os.urandom`` at import and again in a forked child) and counts up by one per key.

    Why ordered (issue 17): ``origin`` has a unique index in events.db's ``events`` and spool.db's
    ``event_outbox``; with random keys every insert landed on a random leaf of it, so a
    100-recipient message's events dirtied some 200 index pages per table (each written to the WAL
    at the commit, and journaled by each savepoint). Keys made together are consecutive and later
    keys sort after earlier ones: inserts append at the index's end.

    Why one counter per process, not 80 random bits per call (issue 17, main process per message):
    the ``os.urandom`` system call and a second format were about half of the 4 us a call cost, two
    calls per message. Two processes' keys clash only if their random starts are closer than the
    number of keys they make in the same millisecond (as likely as two random bases were)."""
    head = int(time.time() * 1000) << 80
    count = _ORIGIN_COUNT
    return [f"{head | (next(count) & _RANDOM_MASK):032x}" for _ in range(n)]


_RANDOM_MASK = (1 << 80) - 1


def _reseed_origins() -> None:
    """A random start for this process's origin counter (at import, and in a forked child, which
    must not count on from its parent's)."""
    global _ORIGIN_COUNT
    _ORIGIN_COUNT = itertools.count(int.from_bytes(os.urandom(10), "big"))


_ORIGIN_COUNT: Iterator[int]
_reseed_origins()
os.register_at_fork(after_in_child=_reseed_origins)


def utc_day(ts: float) -> str:
    """The UTC date of a timestamp (``YYYY-MM-DD``), as ``time.gmtime`` gives it (which floors)."""
    return _utc_day(math.floor(ts) // 86400)


@functools.lru_cache(maxsize=16)
def _utc_day(day: int) -> str:
    """Why cached: every event row stores its day, and a batch's events share one or two."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def bounce_class(event: Event) -> str | None:
    """``hard`` or ``soft`` for a bounced event: explicit ``data["class"]``, else the enhanced status
    code in ``data["status"]`` (bounce reports) or ``data["dsn"]`` (delivery results)."""
    if event.type != EventType.BOUNCED:
        return None
    cls = event.data.get("class")
    if cls in ("hard", "soft"):
        return str(cls)
    status = str(event.data.get("status") or event.data.get("dsn") or "")
    return classify_status(status or None)


def _weight(event: Event) -> int:
    """How many recipient copies an event stands for (an ``accepted`` event may list several)."""
    rcpts = event.data.get("recipients")
    if event.recipient is None and isinstance(rcpts, list) and rcpts:
        return len(rcpts)
    return 1


HARD_BOUNCE_REASON = "hard bounce"
"""The stoplist reason of an address that bounced hard (RCPT gets Sendsay's "permanent errors")."""


@dataclass(frozen=True)
class SuppressionPolicy:
    """Which events put an address on the stoplist, and in which scope."""

    scope: str = "credential"  # "credential" | "global"
    hard_bounces: bool = True
    unsubscribes: bool = True
    complaints: bool = True

    def reason(self, event: Event) -> str | None:
        """Why this event suppresses its recipient, or ``None`` when it does not."""
        if not event.recipient:
            return None
        if event.type == EventType.BOUNCED and self.hard_bounces and bounce_class(event) == "hard":
            return HARD_BOUNCE_REASON
        if event.type == EventType.UNSUBSCRIBED and self.unsubscribes:
            return "unsubscribed"
        if event.type == EventType.COMPLAINED and self.complaints:
            return "complaint"
        return None

    def scope_for(self, credential: str | None) -> str:
        return credential if self.scope == "credential" and credential else GLOBAL_SCOPE


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back from the store (``id`` is what webhooks carry for de-duplication)."""

    id: int
    event: Event
    machine: bool
    bounce_class: str | None


@dataclass(frozen=True)
class OutboxItem:
    """One pending webhook delivery."""

    id: int
    url: str
    attempts: int
    event: StoredEvent


@dataclass(frozen=True)
class Suppressed:
    address: str
    scope: str
    reason: str
    time: float


_EVENT_COLS = "id, type, time, queue_id, recipient, credential, campaign_id, letter_id, url, machine, bounce_class, data"


class EventStoreBase(abc.ABC):
    """The :class:`~pipeline.ports.EventStore` port and the outbox/stoplist operations, on primitives.

    A backend implements :meth:`_fetch` (a read; ``hot``: a short indexed look-up on the event
    loop's path), :meth:`_transaction` (run a function in one write transaction) and :meth:`close`.
    ``dialect`` tells statistics which date functions to use.
    """

    dialect = "sqlite"
    policy: SuppressionPolicy

    def __init__(self, policy: SuppressionPolicy | None) -> None:
        self.policy = policy or SuppressionPolicy()
        self._records: GroupCommit[tuple[Event, list[str], str | None], int] = GroupCommit(self._commit)

    # -- primitives -----------------------------------------------------------------------------
    @abc.abstractmethod
    def _fetch(self, sql: str, args: Sequence[Any] = (), *, hot: bool = False) -> list[tuple[Any, ...]]:
        """Implemented by each backend (SQLite, PostgreSQL)."""

    @abc.abstractmethod
    def _transaction(self, fn: Callable[[Tx], R]) -> R:
        """Implemented by each backend (SQLite, PostgreSQL)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Implemented by each backend (SQLite, PostgreSQL)."""

    def transaction(self, fn: Callable[[Tx], R]) -> R:
        """Run ``fn`` in one write transaction of this store (retention's batched deletes)."""
        return self._transaction(fn)

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One write statement in its own transaction; its rowcount."""
        return self._transaction(lambda tx: tx(sql, args)[1])

    # -- writing ------------------------------------------------------------------------------
    async def record(self, event: Event, webhook_urls: Sequence[str] = (), origin: str | None = None) -> int:
        """Store ``event`` durably (with its webhook deliveries and suppression); its id.
        ``origin``: a unique key; an event already stored under it is not stored again."""
        return await self._records.submit((event, list(dict.fromkeys(webhook_urls)), origin))

    def record_sync(self, event: Event, webhook_urls: Sequence[str] = (), origin: str | None = None) -> int:
        """``record`` for code without a loop (CLI, worker processes)."""
        return self._commit([(event, list(dict.fromkeys(webhook_urls)), origin)])[0]

    def _commit(self, batch: list[tuple[Event, list[str], str | None]]) -> list[int]:
        def write(tx: Tx) -> list[int]:
            memo = TxMemo()  # one transaction, committed or rolled back whole
            return [self.write_event(tx, e, urls, origin, memo=memo) for e, urls, origin in batch]

        return self._transaction(write)

    def write_event(
        self, tx: Tx, event: Event, urls: Sequence[str], origin: str | None = None, *, memo: TxMemo | None = None
    ) -> int:
        """Insert one event, its webhook deliveries and its suppression inside ``tx``; its id.

        Public so a caller holding a transaction on the same database (the spool recording a
        result) can commit the event together with the state it describes. ``origin`` makes it
        idempotent: an event already stored under that key is left as it is (its id returned),
        which is what draining the SQLite spool's event outbox after a crash needs.
        """
        event_id = self.write_event_once(tx, event, urls, origin, memo=memo)
        if event_id is None:  # stored before under this origin (a repeated outbox drain)
            return int(tx("SELECT id FROM events WHERE origin = ?", (origin,))[0][0][0])
        return event_id

    _INSERT_EVENT = (
        "INSERT INTO events (type, time, day, queue_id, recipient, credential, campaign_id,"
        " letter_id, url, machine, bounce_class, weight, data, origin)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO NOTHING"
    )

    def _insert_event(self, tx: Tx, args: tuple[Any, ...]) -> int | None:
        """The ``events`` row: its id, or ``None`` when one is stored under its origin already."""
        rows, _ = tx(self._INSERT_EVENT + " RETURNING id", args)
        return int(rows[0][0]) if rows else None

    def write_event_once(
        self, tx: Tx, event: Event, urls: Sequence[str], origin: str | None = None, *,
        columns: EncodedColumns | None = None, memo: TxMemo | None = None,
    ) -> int | None:
        """:meth:`write_event`, but ``None`` when an event is already stored under ``origin``: the
        caller then knows it was not this write that stored it (no second ``on_event``, count, wake).

        ``columns``: the event's JSON columns as its writer encoded them already (the SQLite
        outbox), not encoded again; ``memo``: what this transaction wrote already for the same
        message (:class:`~pipeline.events.encoding.TxMemo`)."""
        now = time.time()
        data = event.data
        event_id = self._insert_event(tx, (
            str(event.type), event.time, utc_day(event.time), event.queue_id,
            normalize_address(event.recipient) if event.recipient else None,
            event.credential, event.campaign_id, event.letter_id, event.url,
            1 if data.get("machine") else 0, bounce_class(event), _weight(event),
            columns.data if columns is not None else
            dumps_compact({k: v for k, v in data.items() if k != "message"}),
            origin,
        ))
        if event_id is None:
            return None
        # the log (smtpgate messages), same transaction
        write_message_log(tx, event, log_tables(self.dialect), columns=columns, memo=memo)
        store_meta(tx, event, memo)
        for url in urls:
            tx("INSERT INTO webhook_outbox (event_id, url, next_attempt, updated_at) VALUES (?, ?, ?, ?)",
               (event_id, url, now, now))
        reason = self.policy.reason(event)
        if reason and event.recipient:
            tx(
                "INSERT INTO suppression (address, scope, reason, time, event_id) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (normalize_address(event.recipient), self.policy.scope_for(event.credential), reason,
                 event.time, event_id),
            )
        return event_id

    # -- reading events -------------------------------------------------------------------------
    @staticmethod
    def _row_event(row: Sequence[Any]) -> StoredEvent:
        (id_, type_, t, qid, rcpt, cred, camp, letter, url, machine, bclass, data) = row
        event = Event(
            type=type_, queue_id=qid, recipient=rcpt, credential=cred, campaign_id=camp,
            letter_id=letter, url=url, time=t, data=json.loads(data),
        )
        return StoredEvent(int(id_), event, bool(machine), bclass)

    _EVENT_COLS = _EVENT_COLS

    def events(
        self, *, type: str | None = None, queue_id: str | None = None, recipient: str | None = None,
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """Events in the order they were recorded, optionally filtered."""
        where, args = [], []
        for col, val in (("type", type), ("queue_id", queue_id), ("recipient", recipient)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(normalize_address(val) if col == "recipient" else val)
        sql = f"SELECT {_EVENT_COLS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        return [self._row_event(r) for r in self._fetch(sql, (*args, limit))]

    def delivered_at(self, queue_id: str, recipient: str) -> float | None:
        """When this copy was last delivered (for the "too soon after delivery" machine rule)."""
        rows = self._fetch(
            "SELECT MAX(time) FROM events WHERE queue_id = ? AND recipient = ? AND type = 'delivered'",
            (queue_id, normalize_address(recipient)), hot=True,
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def message_info(self, queue_id: str) -> dict[str, str | None]:
        """Credential, campaign and letter id known for a queue id (to complete bounce events)."""
        rows = self._fetch(
            "SELECT credential, campaign_id, letter_id FROM events WHERE queue_id = ?"
            " ORDER BY (credential IS NULL), id LIMIT 1",
            (queue_id,), hot=True,
        )
        if not rows:
            return {"credential": None, "campaign_id": None, "letter_id": None}
        return {"credential": rows[0][0], "campaign_id": rows[0][1], "letter_id": rows[0][2]}

    def recipients_of(self, queue_id: str) -> list[str]:
        """Every recipient recorded for a queue id (to resolve a bounce address's recipient hash)."""
        rows = self._fetch(
            "SELECT DISTINCT recipient FROM events WHERE queue_id = ? AND recipient IS NOT NULL", (queue_id,), hot=True
        )
        return [str(r[0]) for r in rows]

    def counts_by_type(self) -> dict[str, int]:
        return {str(t): int(n) for t, n in self._fetch("SELECT type, COUNT(*) FROM events GROUP BY type")}

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query (statistics use this from a thread)."""
        return self._fetch(sql, tuple(args))

    # -- webhook outbox ---------------------------------------------------------------------
    def due_webhooks(self, now: float, limit: int, exclude: Sequence[int] = ()) -> list[OutboxItem]:
        rows = self._fetch(
            "SELECT o.id, o.url, o.attempts, "
            + ", ".join(f"e.{c.strip()}" for c in _EVENT_COLS.split(","))
            + " FROM webhook_outbox o JOIN events e ON e.id = o.event_id"
            " WHERE o.state = 'pending' AND o.next_attempt <= ? ORDER BY o.next_attempt, o.id LIMIT ?",
            (now, limit + len(exclude)), hot=True,
        )
        skip = set(exclude)
        items = [OutboxItem(int(r[0]), r[1], int(r[2]), self._row_event(r[3:])) for r in rows if r[0] not in skip]
        return items[:limit]

    def next_webhook_at(self) -> float | None:
        rows = self._fetch("SELECT MIN(next_attempt) FROM webhook_outbox WHERE state = 'pending'", hot=True)
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def webhook_delivered(self, item_id: int) -> None:
        self._execute(
            "UPDATE webhook_outbox SET state = 'delivered', attempts = attempts + 1, last_error = NULL,"
            " updated_at = ? WHERE id = ?",
            (time.time(), item_id),
        )

    def webhook_failed(self, item_id: int, error: str, next_attempt: float | None) -> None:
        """Record a failed attempt; ``next_attempt=None`` gives up (state ``dead``)."""
        state = "dead" if next_attempt is None else "pending"
        self._execute(
            "UPDATE webhook_outbox SET state = ?, attempts = attempts + 1, last_error = ?,"
            " next_attempt = COALESCE(?, next_attempt), updated_at = ? WHERE id = ? AND state = 'pending'",
            (state, error[:500], next_attempt, time.time(), item_id),  # a cancelled (dead) row stays dead
        )

    def cancel_webhooks(self, url: str, credential: str | None) -> int:
        """Pending deliveries to ``url`` become ``dead`` ("endpoint removed"): of one credential's
        events, or of every event (``credential`` ``None``). An endpoint removed over the API stops
        receiving at once, instead of retries signed with a secret it no longer has. The count."""
        sql = ("UPDATE webhook_outbox SET state = 'dead', last_error = 'endpoint removed', updated_at = ?"
               " WHERE url = ? AND state = 'pending'")
        args: list[Any] = [time.time(), url]
        if credential is not None:
            sql += " AND event_id IN (SELECT id FROM events WHERE credential = ?)"
            args.append(credential)
        return self._execute(sql, tuple(args))

    def webhook_counts(self) -> dict[str, int]:
        rows = self._fetch("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state", hot=True)
        return {str(s): int(n) for s, n in rows}

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        rows = self._fetch("SELECT id, event_id, url, state, attempts, last_error FROM webhook_outbox ORDER BY id")
        keys = ("id", "event_id", "url", "state", "attempts", "last_error")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- suppression --------------------------------------------------------------------------
    def suppress(self, address: str, scope: str = GLOBAL_SCOPE, reason: str = "manual") -> bool:
        """Add an address; ``False`` when it was already there."""
        return self._execute(
            "INSERT INTO suppression (address, scope, reason, time, event_id) VALUES (?, ?, ?, ?, NULL)"
            " ON CONFLICT DO NOTHING",
            (normalize_address(address), scope, reason, time.time()),
        ) > 0

    def unsuppress(self, address: str, scope: str | None = None) -> int:
        """Remove an address from one scope (or every scope when ``None``); how many rows went."""
        if scope is None:
            return self._execute("DELETE FROM suppression WHERE address = ?", (normalize_address(address),))
        return self._execute(
            "DELETE FROM suppression WHERE address = ? AND scope = ?", (normalize_address(address), scope)
        )

    def suppressions(self, scope: str | None = None) -> list[Suppressed]:
        sql = "SELECT address, scope, reason, time FROM suppression"
        args: tuple[Any, ...] = ()
        if scope is not None:
            sql += " WHERE scope = ?"
            args = (scope,)
        return [Suppressed(*r) for r in self._fetch(sql + " ORDER BY scope, address", args)]

    def suppressed_count(self) -> int:
        return int(self._fetch("SELECT COUNT(*) FROM suppression", hot=True)[0][0])

    def is_suppressed(self, address: str, credential: str | None = None) -> bool:
        """Globally, or for this credential."""
        return is_suppressed(lambda sql, args: self._fetch(sql, args, hot=True), address, credential)


_SCOPES_OF = "SELECT scope, reason FROM suppression WHERE address = ? ORDER BY scope"
"""The stoplist look-up (one per RCPT): every scope of the address in one index seek of the
primary key ``(address, scope)``, in its order (the global scope ``''`` first), filtered here.
Measured on SQLite: 4.5 us against 7.5 for ``scope IN (?, ?)`` (a seek per scope)."""


def _entries(
    fetch: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], address: str, credential: str | None
) -> list[str]:
    """The reasons the address is on the stoplist globally or for ``credential``, global first."""
    rows = fetch(_SCOPES_OF, (normalize_address(address),))
    return [reason for scope, reason in rows if scope == GLOBAL_SCOPE or (credential and scope == credential)]


def is_suppressed(
    fetch: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], address: str, credential: str | None
) -> bool:
    """The one stoplist look-up (store and read-only list alike): global scope, or this credential's."""
    return bool(_entries(fetch, address, credential))


def suppression_reason(
    fetch: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], address: str, credential: str | None
) -> str | None:
    """Why the address is suppressed; a hard bounce wins over other reasons (it says the address
    is broken, which the sender must hear rather than "stoplist")."""
    reasons = _entries(fetch, address, credential)
    if HARD_BOUNCE_REASON in reasons:
        return HARD_BOUNCE_REASON
    return reasons[0] if reasons else None
