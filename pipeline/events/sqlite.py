"""The embedded event store: ``<data_dir>/events.db`` (SQLite, WAL, ``synchronous=FULL``).

One table of events, the webhook outbox and the suppression list live in one database so an
event, the webhook deliveries it causes and the suppression it implies commit in one
transaction: a crash leaves all of them or none. Concurrent ``record`` calls share one commit
(group commit, as in the spool), so a burst of clicks costs one fsync per batch, not per click.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.events.bounces import classify_status
from pipeline.events.messages import MESSAGE_SCHEMA, write_message_log
from pipeline.events.metadata import META_SCHEMA, store_meta
from pipeline.storage.sqlite import open_sqlite

SCHEMA = META_SCHEMA + """
CREATE TABLE IF NOT EXISTS events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    type         TEXT NOT NULL,
    time         REAL NOT NULL,
    day          TEXT NOT NULL,
    queue_id     TEXT,
    recipient    TEXT,
    credential   TEXT,
    campaign_id  TEXT,
    letter_id    TEXT,
    url          TEXT,
    machine      INTEGER NOT NULL DEFAULT 0,
    bounce_class TEXT,
    weight       INTEGER NOT NULL DEFAULT 1,
    data         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_campaign ON events(campaign_id, time);
CREATE INDEX IF NOT EXISTS events_copy ON events(queue_id, recipient, type);
CREATE INDEX IF NOT EXISTS events_credential ON events(credential, time);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     INTEGER NOT NULL REFERENCES events(id),
    url          TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error   TEXT,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON webhook_outbox(state, next_attempt);
CREATE TABLE IF NOT EXISTS suppression (
    address  TEXT NOT NULL,
    scope    TEXT NOT NULL,
    reason   TEXT NOT NULL,
    time     REAL NOT NULL,
    event_id INTEGER,
    PRIMARY KEY (address, scope)
);
"""

GLOBAL_SCOPE = ""
"""The suppression scope that applies to every credential."""


def normalize_address(address: str) -> str:
    """The form addresses are stored and compared in: no brackets, no spaces, lower case."""
    return address.strip().strip("<>").strip().lower()


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


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


class SqliteEventStore:
    """Event store, webhook outbox and suppression list in ``events.db``."""

    def __init__(self, path: Path, policy: SuppressionPolicy | None = None) -> None:
        self.path = path
        self.policy = policy or SuppressionPolicy()
        self._conn = open_sqlite(path)
        self._conn.executescript(SCHEMA + MESSAGE_SCHEMA)
        self._lock = threading.Lock()  # the write connection
        self._read = open_sqlite(path)  # long queries (statistics), from threads
        self._read_lock = threading.Lock()
        self._hot = open_sqlite(path)  # short indexed look-ups on the event loop
        self._hot_lock = threading.Lock()
        self._pending: list[tuple[Event, list[str], asyncio.Future[int]]] = []
        self._flushing = False
        self._closed = False

    # -- writing ------------------------------------------------------------------------------
    async def record(self, event: Event, webhook_urls: Sequence[str] = ()) -> int:
        """Store ``event`` durably (with its webhook deliveries and suppression); its id."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append((event, list(dict.fromkeys(webhook_urls)), fut))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        return await fut

    def record_sync(self, event: Event, webhook_urls: Sequence[str] = ()) -> int:
        """``record`` for code without a loop (CLI, worker processes)."""
        return self._commit([(event, list(dict.fromkeys(webhook_urls)))])[0]

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    ids = await asyncio.to_thread(self._commit, [(e, u) for e, u, _ in batch])
                except Exception as exc:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for (_, _, fut), event_id in zip(batch, ids, strict=True):
                        if not fut.done():
                            fut.set_result(event_id)
        finally:
            self._flushing = False

    def _commit(self, batch: list[tuple[Event, list[str]]]) -> list[int]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                ids = []
                now = time.time()
                for event, urls in batch:
                    cur.execute(
                        "INSERT INTO events (type, time, day, queue_id, recipient, credential, campaign_id,"
                        " letter_id, url, machine, bounce_class, weight, data)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            event.type,
                            event.time,
                            utc_day(event.time),
                            event.queue_id,
                            normalize_address(event.recipient) if event.recipient else None,
                            event.credential,
                            event.campaign_id,
                            event.letter_id,
                            event.url,
                            1 if event.data.get("machine") else 0,
                            bounce_class(event),
                            _weight(event),
                            json.dumps({k: v for k, v in event.data.items() if k != "message"},
                                       separators=(",", ":"), default=str),
                        ),
                    )
                    event_id = int(cur.lastrowid or 0)
                    write_message_log(cur, event)  # the message summary lives in the log, not the event
                    ids.append(event_id)
                    store_meta(cur, event)
                    cur.executemany(
                        "INSERT INTO webhook_outbox (event_id, url, next_attempt, updated_at) VALUES (?, ?, ?, ?)",
                        [(event_id, url, now, now) for url in urls],
                    )
                    reason = self.policy.reason(event)
                    if reason and event.recipient:
                        cur.execute(
                            "INSERT OR IGNORE INTO suppression VALUES (?, ?, ?, ?, ?)",
                            (
                                normalize_address(event.recipient),
                                self.policy.scope_for(event.credential),
                                reason,
                                event.time,
                                event_id,
                            ),
                        )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return ids

    # -- reading events -------------------------------------------------------------------------
    @staticmethod
    def _row_event(row: sqlite3.Row | tuple[Any, ...]) -> StoredEvent:
        (id_, type_, t, qid, rcpt, cred, camp, letter, url, machine, bclass, data) = row
        event = Event(
            type=type_, queue_id=qid, recipient=rcpt, credential=cred, campaign_id=camp,
            letter_id=letter, url=url, time=t, data=json.loads(data),
        )
        return StoredEvent(int(id_), event, bool(machine), bclass)

    _EVENT_COLS = "id, type, time, queue_id, recipient, credential, campaign_id, letter_id, url, machine, bounce_class, data"

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
        sql = f"SELECT {self._EVENT_COLS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        with self._read_lock:
            rows = self._read.execute(sql, (*args, limit)).fetchall()
        return [self._row_event(r) for r in rows]

    def delivered_at(self, queue_id: str, recipient: str) -> float | None:
        """When this copy was last delivered (for the "too soon after delivery" machine rule)."""
        with self._hot_lock:
            row = self._hot.execute(
                "SELECT MAX(time) FROM events WHERE queue_id = ? AND recipient = ? AND type = 'delivered'",
                (queue_id, normalize_address(recipient)),
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def message_info(self, queue_id: str) -> dict[str, str | None]:
        """Credential, campaign and letter id known for a queue id (to complete bounce events)."""
        with self._hot_lock:
            row = self._hot.execute(
                "SELECT credential, campaign_id, letter_id FROM events WHERE queue_id = ?"
                " ORDER BY (credential IS NULL), id LIMIT 1",
                (queue_id,),
            ).fetchone()
        if row is None:
            return {"credential": None, "campaign_id": None, "letter_id": None}
        return {"credential": row[0], "campaign_id": row[1], "letter_id": row[2]}

    def recipients_of(self, queue_id: str) -> list[str]:
        """Every recipient recorded for a queue id (to resolve a bounce address's recipient hash)."""
        with self._hot_lock:
            rows = self._hot.execute(
                "SELECT DISTINCT recipient FROM events WHERE queue_id = ? AND recipient IS NOT NULL", (queue_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def counts_by_type(self) -> dict[str, int]:
        with self._read_lock:
            rows = self._read.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall()
        return {str(t): int(n) for t, n in rows}

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query on the read connection (statistics use this from a thread)."""
        with self._read_lock:
            return list(self._read.execute(sql, tuple(args)).fetchall())

    # -- webhook outbox ---------------------------------------------------------------------
    def due_webhooks(self, now: float, limit: int, exclude: Sequence[int] = ()) -> list[OutboxItem]:
        with self._hot_lock:
            rows = self._hot.execute(
                "SELECT o.id, o.url, o.attempts, "
                + ", ".join(f"e.{c.strip()}" for c in self._EVENT_COLS.split(","))
                + " FROM webhook_outbox o JOIN events e ON e.id = o.event_id"
                " WHERE o.state = 'pending' AND o.next_attempt <= ? ORDER BY o.next_attempt, o.id LIMIT ?",
                (now, limit + len(exclude)),
            ).fetchall()
        skip = set(exclude)
        items = [OutboxItem(int(r[0]), r[1], int(r[2]), self._row_event(r[3:])) for r in rows if r[0] not in skip]
        return items[:limit]

    def next_webhook_at(self) -> float | None:
        with self._hot_lock:
            row = self._hot.execute(
                "SELECT MIN(next_attempt) FROM webhook_outbox WHERE state = 'pending'"
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def webhook_delivered(self, item_id: int) -> None:
        self._outbox_update(
            "UPDATE webhook_outbox SET state = 'delivered', attempts = attempts + 1, last_error = NULL,"
            " updated_at = ? WHERE id = ?",
            (time.time(), item_id),
        )

    def webhook_failed(self, item_id: int, error: str, next_attempt: float | None) -> None:
        """Record a failed attempt; ``next_attempt=None`` gives up (state ``dead``)."""
        state = "dead" if next_attempt is None else "pending"
        self._outbox_update(
            "UPDATE webhook_outbox SET state = ?, attempts = attempts + 1, last_error = ?,"
            " next_attempt = COALESCE(?, next_attempt), updated_at = ? WHERE id = ?",
            (state, error[:500], next_attempt, time.time(), item_id),
        )

    def _outbox_update(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.execute(sql, args)

    def webhook_counts(self) -> dict[str, int]:
        with self._hot_lock:
            rows = self._hot.execute("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state").fetchall()
        return {str(s): int(n) for s, n in rows}

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        with self._read_lock:
            rows = self._read.execute(
                "SELECT id, event_id, url, state, attempts, last_error FROM webhook_outbox ORDER BY id"
            ).fetchall()
        keys = ("id", "event_id", "url", "state", "attempts", "last_error")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- suppression --------------------------------------------------------------------------
    def suppress(self, address: str, scope: str = GLOBAL_SCOPE, reason: str = "manual") -> bool:
        """Add an address; ``False`` when it was already there."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO suppression VALUES (?, ?, ?, ?, NULL)",
                (normalize_address(address), scope, reason, time.time()),
            )
            return cur.rowcount > 0

    def unsuppress(self, address: str, scope: str | None = None) -> int:
        """Remove an address from one scope (or every scope when ``None``); how many rows went."""
        with self._lock:
            if scope is None:
                cur = self._conn.execute("DELETE FROM suppression WHERE address = ?", (normalize_address(address),))
            else:
                cur = self._conn.execute(
                    "DELETE FROM suppression WHERE address = ? AND scope = ?", (normalize_address(address), scope)
                )
            return cur.rowcount

    def suppressions(self, scope: str | None = None) -> list[Suppressed]:
        sql = "SELECT address, scope, reason, time FROM suppression"
        args: tuple[Any, ...] = ()
        if scope is not None:
            sql += " WHERE scope = ?"
            args = (scope,)
        with self._read_lock:
            rows = self._read.execute(sql + " ORDER BY scope, address", args).fetchall()
        return [Suppressed(*r) for r in rows]

    def suppressed_count(self) -> int:
        with self._hot_lock:
            return int(self._hot.execute("SELECT COUNT(*) FROM suppression").fetchone()[0])

    def is_suppressed(self, address: str, credential: str | None = None) -> bool:
        """Globally, or for this credential."""
        scopes = (GLOBAL_SCOPE, credential) if credential else (GLOBAL_SCOPE,)
        with self._hot_lock:
            row = self._hot.execute(
                f"SELECT 1 FROM suppression WHERE address = ? AND scope IN ({','.join('?' * len(scopes))}) LIMIT 1",
                (normalize_address(address), *scopes),
            ).fetchone()
        return row is not None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lock, conn in ((self._lock, self._conn), (self._read_lock, self._read), (self._hot_lock, self._hot)):
            with lock:
                conn.close()
