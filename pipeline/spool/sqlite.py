"""SQLite spool (WAL, ``synchronous=FULL``).

Concurrent sessions' commits are batched: every ``enqueue`` waits on one shared transaction
that a single writer thread commits (:class:`~pipeline.storage.sqlite.SqliteWriter`), so N
sessions finishing DATA together cost one fsync, not N; delivery results and the event outbox
go through the same writer, into the same transactions (:meth:`SqliteSpool.record`).

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
from pipeline.storage.sqlite import SqliteWriter, open_sqlite

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
        queue_id=row[0],
        mail_from=row[1],
        data=row[2],
        context=json.loads(row[3]),
        created_at=row[4],
        recipients=list(recipients),
        attempts=dict.fromkeys(recipients, 0),
        plugin_failures=dict.fromkeys(recipients, 0),
    )


def _insert(
    cur: sqlite3.Cursor,
    row: Row,
    rcpts: list[str],
    not_before: float,
    lease: float | None,
    outbox: Sequence[OutboxRow],
) -> list[int]:
    """One enqueued message (with a lease its recipients are inserted already claimed:
    ``processing``) and its events' outbox rows; the rows' ids."""
    now = time.time()
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
    return _insert_outbox(cur, outbox)


def _insert_outbox(cur: sqlite3.Cursor, outbox: Sequence[OutboxRow]) -> list[int]:
    """Outbox rows, in order; their ids (increasing: the order the event store gets them in)."""
    ids = []
    for item in outbox:
        cur.execute("INSERT INTO event_outbox (origin, event, urls) VALUES (?, ?, ?)", item)
        ids.append(int(cur.lastrowid or 0))
    return ids


def _record_rows(
    cur: sqlite3.Cursor, updates: Sequence[RecipientOutcome], outbox: Sequence[OutboxRow]
) -> list[int]:
    """Results (and their events' outbox rows, whose ids it returns); a message whose recipients
    are all final leaves."""
    now = time.time()
    ids = _insert_outbox(cur, outbox)
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
    for qid in {u.queue_id for u in updates}:  # one statement per message, not a query and a delete
        cur.execute(_DELETE_IF_FINAL, (qid, qid))
    return ids


_DELETE_IF_FINAL = (
    "DELETE FROM messages WHERE queue_id=? AND NOT EXISTS "
    f"(SELECT 1 FROM recipients WHERE queue_id=? AND state NOT IN ({_FINAL_SQL}))"
)
"""A message whose recipients are all final leaves (its recipients with it: ``ON DELETE CASCADE``)."""


def _outbox_rows(cur: sqlite3.Cursor, limit: int, after: int = 0) -> list[tuple[int, str, str, str]]:
    rows = cur.execute(
        "SELECT id, origin, event, urls FROM event_outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    ).fetchall()
    return [(int(i), str(o), str(e), str(u)) for i, o, e, u in rows]


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """``ids`` as ``(first, last)`` runs of consecutive ids (a run holds only ids of ``ids``)."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def recipient_domain(address: str | None) -> str:
    """The lower-cased domain of a recipient address (SQL function ``rcpt_domain``)."""
    return (address or "").rpartition("@")[2].lower()


class SqliteSpool:
    """Embedded spool in ``<data_dir>/spool.db``."""

    def __init__(self, path: Path, forget_after: float = 1.0) -> None:
        """``forget_after``: how long forwarded outbox rows wait for another write to share its
        transaction before their delete commits alone (:meth:`forget_outbox_later`)."""
        self.path = path
        self._conn = open_sqlite(path)
        self._conn.executescript(SCHEMA)
        self._conn.create_function("rcpt_domain", 1, recipient_domain, deterministic=True)
        self._lock = threading.Lock()
        self._writer = SqliteWriter(self._conn, self._lock, "spool-writer")
        self._forget_after = forget_after
        self._forget: list[int] = []  # forwarded outbox rows to delete in the next transaction
        self._forget_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._wake_due = False
        self._claimer: EnqueueClaimer | None = None
        self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]

    @property
    def commits(self) -> int:
        """Transactions the writer has committed (tests and benchmarks count round trips)."""
        return self._writer.commits

    @property
    def inline_commits(self) -> int:
        """Of :attr:`commits`, those made on the enqueuing thread (``enqueue(inline=True)``)."""
        return self._writer.inline_commits

    @property
    def commit_observer(self) -> Callable[[float], None] | None:
        """Called with the seconds of each commit holding an enqueue (/metrics ``store_commit_seconds``)."""
        return self._writer.observer

    @commit_observer.setter
    def commit_observer(self, observer: Callable[[float], None] | None) -> None:
        self._writer.observer = observer

    # -- ingress side ---------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the event loop) after each committed enqueue: wakes the delivery service."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def _notify_batch(self) -> None:
        self._wake_due = False
        self._notify()

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

    async def enqueue(
        self,
        ctx: MessageContext,
        data: bytes,
        recipients: list[str],
        outbox: Sequence[OutboxRow] = (),
        on_commit: Callable[[list[int]], None] | None = None,
        *,
        inline: bool = False,
    ) -> None:
        """Commit the message durably (fsync'd) before returning; raise on failure. Concurrent
        enqueues (and delivery results) share the writer's transaction: one fsync for all.

        ``outbox``: the message's ``accepted`` events, committed with it (a kill -9 right after the
        ``250`` keeps message and event); ``on_commit(ids)`` gets their outbox ids in the event loop
        once committed, before the message is handed to delivery (so its results' events, later
        ids, always follow)."""
        rows = list(outbox)
        row: Row = (ctx.queue_id, ctx.message.mail_from or "", data, json.dumps(ctx.to_record()), time.time())
        # Deferred delivery (a dialect's send_at): the recipients are due at not_before, not now.
        not_before = float(ctx.not_before or 0.0)
        rcpts = list(dict.fromkeys(recipients))
        claimer = self._claimer
        lease = claimer.reserve(rcpts, not_before) if claimer is not None else None

        def then(error: BaseException | None) -> None:
            if error is None and on_commit is not None and rows:
                on_commit(ids)
            if claimer is not None and lease is not None:
                if error is None:
                    claimer.claimed([_claimed(row, rcpts)])
                else:
                    claimer.cancel(1)
            elif error is None and not self._wake_due:  # one wake-up per committed batch, not per message
                self._wake_due = True
                asyncio.get_running_loop().call_soon(self._notify_batch)

        ids: list[int] = []

        def write(cur: sqlite3.Cursor) -> None:
            ids[:] = _insert(cur, row, rcpts, not_before, lease, rows)

        await self._writer.run(write, then, measured=True, inline=inline)

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

    async def record(
        self,
        updates: Sequence[RecipientOutcome],
        outbox: Sequence[OutboxRow] = (),
        on_commit: Callable[[list[int]], None] | None = None,
        *,
        linger: float = 0.0,
    ) -> None:
        """Commit recipients' results (with ``outbox``: the events describing them, as
        ``(origin, event JSON, webhook URLs JSON)`` rows of ``event_outbox``, forwarded into the event
        store after the commit: issue 11 point 3), in the writer's shared transaction (one fsync).
        ``on_commit(ids)``: the outbox rows' ids, in the event loop, once committed. ``linger``:
        seconds the results may wait for another write (an enqueue) to share its commit
        (:meth:`SqliteWriter.run`); until they are committed a crash hands the copies out again."""
        updates, outbox = list(updates), list(outbox)
        ids: list[int] = []

        def write(cur: sqlite3.Cursor) -> None:
            ids[:] = _record_rows(cur, updates, outbox)

        def then(error: BaseException | None) -> None:
            if error is None and on_commit is not None and outbox:
                on_commit(ids)

        await self._writer.run(write, then, linger=linger)

    def record_sync(self, updates: Sequence[RecipientOutcome], outbox: Sequence[OutboxRow] = ()) -> None:
        """Apply results in one transaction; drop messages whose recipients are all final."""
        self._transaction(lambda cur: _record_rows(cur, updates, outbox))

    async def take_outbox(self, limit: int = 500, after: int = 0) -> list[tuple[int, str, str, str]]:
        """:meth:`outbox` (rows with an id above ``after``) through the writer (no thread hop of its own)."""
        return await self._writer.run(lambda cur: _outbox_rows(cur, limit, after))

    async def forget_outbox(self, ids: Sequence[int]) -> None:
        """:meth:`outbox_done` through the writer, in its shared transaction."""
        rows = [(i,) for i in ids]
        await self._writer.run(lambda cur: cur.executemany("DELETE FROM event_outbox WHERE id = ?", rows))

    def forget_outbox_later(self, ids: Sequence[int]) -> None:
        """Forget outbox rows the event store now holds in the next transaction of spool.db, whoever
        causes it (an enqueue, a result), not in a commit of its own: until then a restart would
        forward them again, which their ``origin`` key makes a no-op."""
        with self._forget_lock:
            first = not self._forget
            self._forget.extend(ids)
        if first:
            self._writer.defer(self._forget_now)
            # no other write within forget_after: an empty transaction carries the delete
            asyncio.get_running_loop().call_later(self._forget_after, self._forget_alone)

    def _forget_alone(self) -> None:
        if self._forget:
            asyncio.ensure_future(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except sqlite3.Error:  # closed meanwhile (close ran the delete), or failing: the next write retries
            pass

    def _forget_now(self, cur: sqlite3.Cursor) -> None:
        with self._forget_lock:
            ids, self._forget = self._forget, []
        cur.executemany("DELETE FROM event_outbox WHERE id BETWEEN ? AND ?", _runs(ids))

    async def flush(self) -> None:
        """Commit what :meth:`forget_outbox_later` still holds now (an empty batch carries it)."""
        await self._writer.run(lambda cur: None)

    def outbox(self, limit: int = 500) -> list[tuple[int, str, str, str]]:
        """Events committed with their results and not yet in the event store: ``(id, origin, event, urls)``."""
        with self._lock:
            return _outbox_rows(self._conn.cursor(), limit)

    def outbox_done(self, ids: Sequence[int]) -> None:
        """Forget outbox rows the event store now holds (its ``origin`` key makes a repeat harmless)."""
        self._transaction(
            lambda cur: cur.executemany("DELETE FROM event_outbox WHERE id = ?", [(i,) for i in ids])
        )

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
                n += cur.execute(
                    "UPDATE recipients SET state='queued', lease_until=0 "
                    "WHERE state='processing' AND lease_until=?",
                    (until,),
                ).rowcount
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
        self._writer.close()
        with self._lock:
            self._conn.close()
