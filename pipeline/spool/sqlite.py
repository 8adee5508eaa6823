"""SQLite spool (WAL, ``synchronous=FULL``).

Concurrent sessions' commits are batched: every ``enqueue`` waits on one shared transaction
that a single writer commits, so N sessions finishing DATA together cost one fsync, not N.
Delivery results are batched the same way (:meth:`SqliteSpool.record`).

Delivery costs nothing while there is nothing to do (issue 17 item 4): a message is handed to a free
delivery slot in its enqueue's own transaction (committed ``processing`` with a lease: no claim
query, no second commit; ``set_claimer``), and the scheduler learns of changes made by another
process (``smtpgate queue retry``) from ``PRAGMA data_version`` on this connection
(``changed_elsewhere``), not by re-reading the queue.

State per recipient: ``queued`` -> ``processing`` (claimed, with a lease) -> ``delivered`` |
``deferred`` (with ``next_attempt``) | ``bounced`` | ``expired`` | ``failed`` | ``discarded``.
A message row is removed once every recipient has reached a final state (like Postfix: the
queue holds only what still has work to do; the event store keeps the history).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.contract.context import MessageContext
from pipeline.contract.vocabulary import FINAL_STATES
from pipeline.ports import EnqueueClaimer, QueuedMessage, RecipientOutcome
from pipeline.spool.rows import RECIPIENT_COLUMNS, ROW_KEYS, recipient_rows, show_record
from pipeline.storage.sqlite import open_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    queue_id   TEXT PRIMARY KEY,
    mail_from  TEXT NOT NULL,
    data       BLOB NOT NULL,
    context    TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id     TEXT NOT NULL REFERENCES messages(queue_id) ON DELETE CASCADE,
    recipient    TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'queued',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_reply   TEXT,
    updated_at   REAL NOT NULL,
    lease_until  REAL NOT NULL DEFAULT 0,
    plugin_failures INTEGER NOT NULL DEFAULT 0,
    next_hop     TEXT,
    PRIMARY KEY (queue_id, recipient)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(state, next_attempt);
CREATE TABLE IF NOT EXISTS event_outbox (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL UNIQUE,
    event  TEXT NOT NULL,
    urls   TEXT NOT NULL
);
"""

OutboxRow = tuple[str, str, str]
"""``(origin, event JSON, webhook URLs JSON)``: an event committed with the result it describes."""

_FINAL_SQL = ",".join(f"'{s}'" for s in sorted(FINAL_STATES))
_NOT_HELD = " AND rcpt_domain(recipient) NOT IN (SELECT value FROM json_each(?))"


Row = tuple[str, str, bytes, str, float]
"""A ``messages`` row: ``(queue_id, mail_from, data, context JSON, created_at)``."""


def _claimed(row: Row, recipients: list[str]) -> QueuedMessage:
    """The message an enqueue committed already claimed, as :meth:`SqliteSpool.claim` would return it."""
    return QueuedMessage(
        queue_id=row[0], mail_from=row[1], data=row[2], context=json.loads(row[3]), created_at=row[4],
        recipients=list(recipients), attempts=dict.fromkeys(recipients, 0),
        plugin_failures=dict.fromkeys(recipients, 0),
    )


def recipient_domain(address: str | None) -> str:
    """The lower-cased domain of a recipient address (SQL function ``rcpt_domain``)."""
    return (address or "").rpartition("@")[2].lower()


class SqliteSpool:
    """Embedded spool in ``<data_dir>/spool.db``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_sqlite(path)
        self._conn.executescript(SCHEMA)
        self._conn.create_function("rcpt_domain", 1, recipient_domain, deterministic=True)
        self._lock = threading.Lock()
        self._pending: list[tuple[Row, list[str], float, float | None, asyncio.Future[None]]] = []
        self._flushing = False
        self._updates: list[tuple[list[RecipientOutcome], list[OutboxRow], asyncio.Future[None]]] = []
        self._recording = False
        self._listeners: list[Callable[[], None]] = []
        self.commit_observer: Callable[[float], None] | None = None  # seconds per enqueue commit
        self._claimer: EnqueueClaimer | None = None
        self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]

    # -- ingress side ---------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the event loop) after each committed enqueue: wakes the delivery service."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def set_claimer(self, claimer: EnqueueClaimer | None) -> None:
        """Hand each enqueued message to ``claimer`` in its enqueue transaction when it has a slot."""
        self._claimer = claimer

    def changed_elsewhere(self) -> bool:
        """Whether another connection (another process: the queue CLI) committed to spool.db since
        the last call. ``PRAGMA data_version`` reads the WAL index in shared memory: no table is
        read and no thread is needed; this connection's own commits do not change it (they wake
        the scheduler themselves). When a commit holds the connection, answer yes (look again)."""
        if not self._lock.acquire(blocking=False):
            return True
        try:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        finally:
            self._lock.release()
        changed = version != self._data_version
        self._data_version = version
        return bool(changed)

    async def enqueue(self, ctx: MessageContext, data: bytes, recipients: list[str]) -> None:
        """Commit the message durably (fsync'd) before returning; raise on failure."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        row: Row = (ctx.queue_id, ctx.message.mail_from or "", data, json.dumps(ctx.to_record()), time.time())
        # Deferred delivery (a dialect's send_at): the recipients are due at not_before, not now.
        not_before = float(ctx.not_before or 0.0)
        rcpts = list(dict.fromkeys(recipients))
        lease = self._claimer.reserve(rcpts, not_before) if self._claimer is not None else None
        self._pending.append((row, rcpts, not_before, lease, fut))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                leased = [(row, rcpts) for row, rcpts, _, lease, _ in batch if lease is not None]
                try:
                    await asyncio.to_thread(self._commit, [(r, rc, nb, ls) for r, rc, nb, ls, _ in batch])
                except Exception as exc:
                    if leased and self._claimer is not None:
                        self._claimer.cancel(len(leased))
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
                    if leased and self._claimer is not None:
                        self._claimer.claimed([_claimed(row, rcpts) for row, rcpts in leased])
                    if len(leased) < len(batch):
                        self._notify()
        finally:
            self._flushing = False

    def _commit(self, batch: list[tuple[Row, list[str], float, float | None]]) -> float:
        started = time.perf_counter()
        now = self._commit_rows(batch)
        if self.commit_observer is not None:  # /metrics: store commit latency
            self.commit_observer(time.perf_counter() - started)
        return now

    def _commit_rows(self, batch: list[tuple[Row, list[str], float, float | None]]) -> float:
        """Insert the batch in one transaction; a message with a lease is inserted already claimed."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                for row, rcpts, not_before, lease in batch:
                    cur.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", row)
                    if lease is None:
                        cur.executemany(
                            "INSERT INTO recipients (queue_id, recipient, updated_at, next_attempt) VALUES (?, ?, ?, ?)",
                            [(row[0], r, now, not_before) for r in rcpts],
                        )
                    else:
                        cur.executemany(
                            "INSERT INTO recipients (queue_id, recipient, updated_at, next_attempt, state, lease_until) "
                            "VALUES (?, ?, ?, ?, 'processing', ?)",
                            [(row[0], r, now, not_before, now + lease) for r in rcpts],
                        )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return now

    # -- delivery side --------------------------------------------------------------------

    def _transaction(self, fn: Callable[[sqlite3.Cursor], Any]) -> Any:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                result = fn(cur)
                cur.execute("COMMIT")
                return result
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def recover(self) -> int:
        """Hand every recipient left in ``processing`` (a crash, a kill -9) back to the queue.

        One delivery service runs per spool file, so at start nothing is legitimately in flight.
        Returns the number of recipients resumed.
        """

        def run(cur: sqlite3.Cursor) -> int:
            cur.execute("UPDATE recipients SET state='queued', lease_until=0 WHERE state='processing'")
            return cur.rowcount

        return int(self._transaction(run))

    def claim(
        self,
        limit: int,
        lease: float,
        now: float | None = None,
        exclude: frozenset[tuple[str, str]] = frozenset(),
        hold: frozenset[str] = frozenset(),
    ) -> list[QueuedMessage]:
        """Mark up to ``limit`` messages' due recipients ``processing`` (leased) and return them.

        ``exclude``: ``(queue_id, recipient)`` pairs the caller still holds (a lease that ran out
        while the copy is in flight must not start a second, concurrent attempt). ``hold``:
        recipient domains not to claim now (traffic shaping: a suspended or saturated
        destination); they stay due, untouched, and the next messages are claimed instead.
        """
        now = time.time() if now is None else now
        held = (json.dumps(sorted(hold)),) if hold else ()

        def run(cur: sqlite3.Cursor) -> list[QueuedMessage]:
            due = "((state IN ('queued','deferred') AND next_attempt <= ?) OR (state = 'processing' AND lease_until < ?))"
            if hold:
                due = f"({due}{_NOT_HELD})"
            qids = [
                r[0]
                for r in cur.execute(
                    f"SELECT queue_id, MIN(next_attempt) AS m FROM recipients WHERE {due} "
                    "GROUP BY queue_id ORDER BY m, queue_id LIMIT ?",
                    (now, now, *held, limit),
                )
            ]
            by_msg: dict[str, list[tuple[str, int, int]]] = {}
            for qid in qids:
                rows = cur.execute(
                    f"SELECT recipient, attempts, plugin_failures FROM recipients WHERE queue_id=? AND {due}",
                    (qid, now, now, *held),
                ).fetchall()
                rows = [r for r in rows if (qid, r[0]) not in exclude]
                if rows:
                    by_msg[qid] = rows
            out = []
            for qid, rcpts in by_msg.items():
                msg = cur.execute(
                    "SELECT mail_from, data, context, created_at FROM messages WHERE queue_id=?", (qid,)
                ).fetchone()
                if msg is None:
                    continue
                cur.executemany(
                    "UPDATE recipients SET state='processing', lease_until=?, updated_at=? "
                    "WHERE queue_id=? AND recipient=?",
                    [(now + lease, now, qid, r) for r, _, _ in rcpts],
                )
                out.append(
                    QueuedMessage(
                        queue_id=qid,
                        mail_from=msg[0],
                        data=bytes(msg[1]),
                        context=json.loads(msg[2]),
                        created_at=msg[3],
                        recipients=[r for r, _, _ in rcpts],
                        attempts={r: a for r, a, _ in rcpts},
                        plugin_failures={r: p for r, _, p in rcpts},
                    )
                )
            return out

        return list(self._transaction(run))

    def next_due(self, hold: frozenset[str] = frozenset()) -> float | None:
        """When the earliest queued or deferred recipient is due (``None``: nothing waiting), not
        counting recipients at ``hold`` domains (see :meth:`claim`)."""
        sql = "SELECT MIN(next_attempt) FROM recipients WHERE state IN ('queued','deferred')"
        with self._lock:
            if hold:
                row = self._conn.execute(sql + _NOT_HELD, (json.dumps(sorted(hold)),)).fetchone()
            else:
                row = self._conn.execute(sql).fetchone()
        return None if row[0] is None else float(row[0])

    async def record(self, updates: Sequence[RecipientOutcome], outbox: Sequence[OutboxRow] = ()) -> None:
        """Commit recipients' results (with ``outbox``: the events describing them, as
        ``(origin, event JSON, webhook URLs JSON)`` rows of ``event_outbox``, drained into the event
        store after the commit: issue 11 point 3); concurrent callers share one transaction (one fsync)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._updates.append((list(updates), list(outbox), fut))
        if not self._recording:
            self._recording = True
            loop.create_task(self._flush_updates())
        await fut

    async def _flush_updates(self) -> None:
        try:
            while self._updates:
                batch, self._updates = self._updates, []
                try:
                    await asyncio.to_thread(
                        self.record_sync, [u for ups, _, _ in batch for u in ups], [r for _, rows, _ in batch for r in rows]
                    )
                except Exception as exc:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._recording = False

    def record_sync(self, updates: Sequence[RecipientOutcome], outbox: Sequence[OutboxRow] = ()) -> None:
        """Apply results in one transaction; drop messages whose recipients are all final."""

        def run(cur: sqlite3.Cursor) -> None:
            now = time.time()
            cur.executemany("INSERT INTO event_outbox (origin, event, urls) VALUES (?, ?, ?)", list(outbox))
            cur.executemany(
                "UPDATE recipients SET state=?, attempts=?, next_attempt=?, last_reply=?, "
                "plugin_failures=?, next_hop=?, lease_until=0, updated_at=? WHERE queue_id=? AND recipient=?",
                [
                    (
                        u.state,
                        u.attempts,
                        u.next_attempt,
                        u.last_reply or None,
                        u.plugin_failures,
                        u.relay,
                        now,
                        u.queue_id,
                        u.recipient,
                    )
                    for u in updates
                ],
            )
            for qid in {u.queue_id for u in updates}:
                open_left = cur.execute(
                    f"SELECT 1 FROM recipients WHERE queue_id=? AND state NOT IN ({_FINAL_SQL}) LIMIT 1", (qid,)
                ).fetchone()
                if open_left is None:
                    cur.execute("DELETE FROM messages WHERE queue_id=?", (qid,))

        self._transaction(run)

    def outbox(self, limit: int = 500) -> list[tuple[int, str, str, str]]:
        """Events committed with their results and not yet in the event store: ``(id, origin, event, urls)``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, origin, event, urls FROM event_outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(int(i), str(o), str(e), str(u)) for i, o, e, u in rows]

    def outbox_done(self, ids: Sequence[int]) -> None:
        """Forget outbox rows the event store now holds (its ``origin`` key makes a repeat harmless)."""
        self._transaction(lambda cur: cur.executemany("DELETE FROM event_outbox WHERE id = ?", [(i,) for i in ids]))

    def release(self, queue_id: str, recipients: Sequence[str]) -> None:
        """Hand claimed recipients back untouched (shutdown with the message still in hand)."""

        def run(cur: sqlite3.Cursor) -> None:
            cur.executemany(
                "UPDATE recipients SET state='queued', lease_until=0 "
                "WHERE queue_id=? AND recipient=? AND state='processing'",
                [(queue_id, r) for r in recipients],
            )

        self._transaction(run)

    def release_leases(self, leases: Sequence[float]) -> int:
        """Hand back recipients still leased until exactly one of ``leases`` (claims whose outcome was
        lost; see :meth:`pipeline.spool.postgres.PostgresSpool.release_leases`); how many."""

        def run(cur: sqlite3.Cursor) -> int:
            n = 0
            for until in leases:
                n += cur.execute("UPDATE recipients SET state='queued', lease_until=0 "
                                 "WHERE state='processing' AND lease_until=?", (until,)).rowcount
            return n

        return int(self._transaction(run))

    # -- queue tools ----------------------------------------------------------------------

    def list_recipients(self) -> list[dict[str, Any]]:
        """Every recipient still in the queue, oldest message first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT m.queue_id, m.mail_from, length(m.data), m.created_at, "
                + ", ".join(f"r.{c}" for c in RECIPIENT_COLUMNS)
                + " FROM messages m JOIN recipients r ON r.queue_id = m.queue_id"
                " ORDER BY m.created_at, m.queue_id, r.recipient"
            ).fetchall()
        return [dict(zip(ROW_KEYS, row, strict=True)) for row in rows]

    def show(self, queue_id: str) -> dict[str, Any] | None:
        """One message: envelope, context, raw bytes and each recipient's state."""
        with self._lock:
            msg = self._conn.execute(
                "SELECT mail_from, data, context, created_at FROM messages WHERE queue_id=?", (queue_id,)
            ).fetchone()
            if msg is None:
                return None
            rcpts = self._conn.execute(
                f"SELECT {', '.join(RECIPIENT_COLUMNS)} FROM recipients WHERE queue_id=? ORDER BY recipient",
                (queue_id,),
            ).fetchall()
        return show_record(queue_id, msg, recipient_rows(rcpts))

    def retry(self, queue_id: str | None = None) -> int:
        """Make deferred recipients (of one message, or all with ``None``) due now; returns how many."""

        def run(cur: sqlite3.Cursor) -> int:
            if queue_id is None:
                cur.execute("UPDATE recipients SET next_attempt=0 WHERE state IN ('deferred','queued')")
            else:
                cur.execute(
                    "UPDATE recipients SET next_attempt=0 WHERE queue_id=? AND state IN ('deferred','queued')",
                    (queue_id,),
                )
            return cur.rowcount

        n = int(self._transaction(run))
        if n:
            self._notify()  # due now: in this process data_version does not change, so wake delivery
        return n

    def hold(self, queue_id: str) -> int:
        """Stop a message's waiting copies (``queued``, ``deferred``) from being attempted; how many.
        ``claim`` and ``next_due`` only see ``queued`` and ``deferred``, so a ``held`` copy just waits."""

        def run(cur: sqlite3.Cursor) -> int:
            cur.execute(
                "UPDATE recipients SET state='held', updated_at=? WHERE queue_id=? AND state IN ('queued','deferred')",
                (time.time(), queue_id),
            )
            return cur.rowcount

        return int(self._transaction(run))

    def unhold(self, queue_id: str) -> int:
        """Release a held message: its held copies are queued and due now; how many."""

        def run(cur: sqlite3.Cursor) -> int:
            cur.execute(
                "UPDATE recipients SET state='queued', next_attempt=0, updated_at=? WHERE queue_id=? AND state='held'",
                (time.time(), queue_id),
            )
            return cur.rowcount

        n = int(self._transaction(run))
        if n:
            self._notify()  # wake delivery, as an enqueue does
        return n

    def delete(self, queue_id: str) -> bool:
        """Remove a message and its recipients from the queue."""

        def run(cur: sqlite3.Cursor) -> bool:
            cur.execute("DELETE FROM messages WHERE queue_id=?", (queue_id,))
            return cur.rowcount > 0

        return bool(self._transaction(run))

    def queue_summary(self) -> tuple[dict[str, int], float | None]:
        """(recipients by state, acceptance time of the oldest message still queued) for /metrics."""
        with self._lock:
            states = self._conn.execute(
                f"SELECT state, COUNT(*) FROM recipients WHERE state NOT IN ({_FINAL_SQL}) GROUP BY state"
            ).fetchall()
            oldest = self._conn.execute(
                f"SELECT MIN(m.created_at) FROM messages m JOIN recipients r ON r.queue_id = m.queue_id "
                f"WHERE r.state NOT IN ({_FINAL_SQL})"
            ).fetchone()[0]
        return {str(s): int(n) for s, n in states}, oldest

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
