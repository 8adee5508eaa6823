"""Event retention: delete events older than a cut-off from ``<data_dir>/events.db``.

What stays: events that still have a ``pending`` webhook delivery (the sender needs the event to
POST it), every pending outbox row, and the whole suppression list (a stoplist entry outlives
the event that caused it). The message log (:mod:`pipeline.events.messages`) goes by the same
cut-off: a message accepted before it leaves the log once none of its copies still waits in the
queue. Finished outbox rows (``delivered`` / ``dead``) of deleted events go
with them. Deletion runs in short batches, each its own transaction, so a running server's
writers wait at most one batch (the database is in WAL mode; readers never wait).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pipeline.events.messages import MESSAGE_SCHEMA
from pipeline.events.sqlite import SCHEMA
from pipeline.storage.sqlite import open_sqlite

BATCH = 5000
"""Events deleted per transaction."""

_OLD = (
    "SELECT e.id FROM events e WHERE e.time < ? AND NOT EXISTS ("
    "SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id AND o.state = 'pending') "
    "ORDER BY e.time LIMIT ?"
)


_OLD_MESSAGES = (
    "SELECT m.queue_id FROM messages m WHERE m.accepted_at < ? AND NOT EXISTS ("
    "SELECT 1 FROM message_recipients r WHERE r.queue_id = m.queue_id"
    " AND r.state IN ('queued', 'processing', 'deferred')) ORDER BY m.id LIMIT ?"
)


@dataclass(frozen=True)
class PruneResult:
    """How many rows went (or, for a dry run, would go) and how many old events were kept."""

    events: int
    webhook_rows: int
    kept_pending: int
    messages: int = 0


def _prune_messages(conn: sqlite3.Connection, before: float, batch: int, dry_run: bool) -> int:
    """Old messages whose copies are all final leave the log (batched like the events)."""
    if dry_run:
        return int(conn.execute(f"SELECT COUNT(*) FROM ({_OLD_MESSAGES.replace(' LIMIT ?', '')})",
                                (before,)).fetchone()[0])
    total = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [r[0] for r in conn.execute(_OLD_MESSAGES, (before, batch))]
            if ids:
                marks = ",".join("?" * len(ids))
                conn.execute(f"DELETE FROM message_recipients WHERE queue_id IN ({marks})", ids)
                total += conn.execute(f"DELETE FROM messages WHERE queue_id IN ({marks})", ids).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if len(ids) < batch:
            return total


def _kept(conn: sqlite3.Connection, before: float) -> int:
    row = conn.execute(
        "SELECT COUNT(DISTINCT e.id) FROM events e JOIN webhook_outbox o ON o.event_id = e.id "
        "WHERE e.time < ? AND o.state = 'pending'",
        (before,),
    ).fetchone()
    return int(row[0])


def prune_events(path: Path, before: float, *, batch: int = BATCH, dry_run: bool = False) -> PruneResult:
    """Delete events recorded before ``before`` (a Unix time) in batches of ``batch``."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    conn = open_sqlite(path)
    try:
        conn.executescript(SCHEMA + MESSAGE_SCHEMA)
        messages = _prune_messages(conn, before, batch, dry_run)
        if dry_run:
            n = conn.execute(
                f"SELECT COUNT(*) FROM ({_OLD.replace(' LIMIT ?', '')})", (before,)
            ).fetchone()[0]
            w = conn.execute(
                "SELECT COUNT(*) FROM webhook_outbox o JOIN events e ON e.id = o.event_id "
                "WHERE e.time < ? AND o.state != 'pending' AND NOT EXISTS ("
                "SELECT 1 FROM webhook_outbox p WHERE p.event_id = e.id AND p.state = 'pending')",
                (before,),
            ).fetchone()[0]
            return PruneResult(int(n), int(w), _kept(conn, before), messages)
        events = webhook_rows = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in conn.execute(_OLD, (before, batch))]
                if ids:
                    marks = ",".join("?" * len(ids))
                    webhook_rows += conn.execute(
                        f"DELETE FROM webhook_outbox WHERE event_id IN ({marks})", ids
                    ).rowcount
                    events += conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if len(ids) < batch:
                break
        return PruneResult(events, webhook_rows, _kept(conn, before), messages)
    finally:
        conn.close()
