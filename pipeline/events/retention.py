"""Event retention: delete events older than a cut-off from the event store (``<data_dir>/events.db``,
or ``[storage] url``'s PostgreSQL, where one run prunes the whole cluster's events).

What stays: events that still have a ``pending`` webhook delivery (the sender needs the event to
POST it), every pending outbox row, and the whole suppression list (a stoplist entry outlives
the event that caused it). The message log (:mod:`pipeline.events.messages`) goes by the same
cut-off: a message accepted before it leaves the log once none of its copies still waits in the
queue. Finished outbox rows (``delivered`` / ``dead``) of deleted events go
with them. Deletion runs in short batches, each its own transaction, so a running server's
writers wait at most one batch (SQLite is in WAL mode, PostgreSQL's readers never wait either).
The SQL is shared by both backends (``?`` placeholders, run through the store's primitives).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.events.messages import log_tables
from pipeline.events.sqlite import SqliteEventStore
from pipeline.events.store import EventStoreBase
from pipeline.storage.tx import Tx

BATCH = 5000
"""Events deleted per transaction."""

_OLD = (
    "SELECT e.id FROM events e WHERE e.time < ? AND NOT EXISTS ("
    "SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id AND o.state = 'pending') "
    "ORDER BY e.time LIMIT ?"
)


def _old_messages(store: EventStoreBase) -> str:
    t = log_tables(store.dialect)
    return (
        f"SELECT m.queue_id FROM {t.messages} m WHERE m.accepted_at < ? AND NOT EXISTS ("
        f"SELECT 1 FROM {t.recipients} r WHERE r.queue_id = m.queue_id"
        " AND r.state IN ('queued', 'processing', 'deferred')) ORDER BY m.id LIMIT ?"
    )


@dataclass(frozen=True)
class PruneResult:
    """How many rows went (or, for a dry run, would go) and how many old events were kept."""

    events: int
    webhook_rows: int
    kept_pending: int
    messages: int = 0


def _marks(ids: Sequence[Any]) -> str:
    return ",".join("?" * len(ids))


def _prune_messages(store: EventStoreBase, before: float, batch: int, dry_run: bool) -> int:
    """Old messages whose copies are all final leave the log (batched like the events)."""
    old = _old_messages(store)
    if dry_run:
        return int(store.query(f"SELECT COUNT(*) FROM ({old.replace(' LIMIT ?', '')}) AS old", (before,))[0][0])
    t = log_tables(store.dialect)

    def one_batch(tx: Tx) -> tuple[int, int]:
        ids = [r[0] for r in tx(old, (before, batch))[0]]
        if not ids:
            return 0, 0
        tx(f"DELETE FROM {t.recipients} WHERE queue_id IN ({_marks(ids)})", ids)
        return len(ids), tx(f"DELETE FROM {t.messages} WHERE queue_id IN ({_marks(ids)})", ids)[1]

    total = 0
    while True:
        found, deleted = store.transaction(one_batch)
        total += deleted
        if found < batch:
            return total


def _kept(store: EventStoreBase, before: float) -> int:
    rows = store.query(
        "SELECT COUNT(DISTINCT e.id) FROM events e JOIN webhook_outbox o ON o.event_id = e.id "
        "WHERE e.time < ? AND o.state = 'pending'",
        (before,),
    )
    return int(rows[0][0])


def prune_store(store: EventStoreBase, before: float, *, batch: int = BATCH, dry_run: bool = False) -> PruneResult:
    """Delete events recorded before ``before`` (a Unix time) in batches of ``batch``, in either backend."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    messages = _prune_messages(store, before, batch, dry_run)
    if dry_run:
        n = store.query(f"SELECT COUNT(*) FROM ({_OLD.replace(' LIMIT ?', '')}) AS old", (before,))[0][0]
        w = store.query(
            "SELECT COUNT(*) FROM webhook_outbox o JOIN events e ON e.id = o.event_id "
            "WHERE e.time < ? AND o.state != 'pending' AND NOT EXISTS ("
            "SELECT 1 FROM webhook_outbox p WHERE p.event_id = e.id AND p.state = 'pending')",
            (before,),
        )[0][0]
        return PruneResult(int(n), int(w), _kept(store, before), messages)

    def one_batch(tx: Tx) -> tuple[int, int, int]:
        ids = [r[0] for r in tx(_OLD, (before, batch))[0]]
        if not ids:
            return 0, 0, 0
        hooks = tx(f"DELETE FROM webhook_outbox WHERE event_id IN ({_marks(ids)})", ids)[1]
        return len(ids), tx(f"DELETE FROM events WHERE id IN ({_marks(ids)})", ids)[1], hooks

    events = webhook_rows = 0
    while True:
        found, deleted, hooks = store.transaction(one_batch)
        events += deleted
        webhook_rows += hooks
        if found < batch:
            break
    return PruneResult(events, webhook_rows, _kept(store, before), messages)


def prune_events(path: Path, before: float, *, batch: int = BATCH, dry_run: bool = False) -> PruneResult:
    """:func:`prune_store` on the SQLite file ``path``."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    store = SqliteEventStore(path)
    try:
        return prune_store(store, before, batch=batch, dry_run=dry_run)
    finally:
        store.close()
