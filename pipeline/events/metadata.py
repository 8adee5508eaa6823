"""Message metadata in the event store: the tags and metadata a sender attached (vendor dialects),
stored once per queue id beside the events, so every event of the message (delivery, opens and
clicks recorded by the tracking service, bounces) carries them to webhooks and statistics.

Stored with the message's first event (``accepted``) in the same transaction; later events find
it by queue id. A separate table, not columns on ``events``: no migration of existing databases,
and a tracking event never has to copy it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from pipeline.contract.context import Event
from pipeline.events.encoding import TxMemo, dumps_spaced

META_SCHEMA = """
CREATE TABLE IF NOT EXISTS message_meta (
    queue_id TEXT PRIMARY KEY,
    tags     TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}'
);
"""


class _Queryable(Protocol):
    def query(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]: ...


def store_meta(tx: Callable[..., Any], event: Event, memo: TxMemo | None = None) -> None:
    """Record the event's message metadata once per queue id (inside the event's transaction, on
    either backend). ``memo``: queue ids this transaction recorded already (skipped: the insert
    could only do nothing, and encoding the metadata again is what a 100-recipient message paid)."""
    if event.queue_id and (event.tags or event.metadata):
        if memo is not None and event.queue_id in memo.meta:
            return
        tx(
            "INSERT INTO message_meta (queue_id, tags, metadata) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (event.queue_id, json.dumps(list(event.tags)), dumps_spaced(event.metadata)),
        )
        if memo is not None:
            memo.meta.add(event.queue_id)


def message_meta(store: _Queryable, queue_ids: list[str]) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """``queue id -> (tags, metadata)`` for those that have any."""
    ids = sorted({q for q in queue_ids if q})
    out: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = store.query(
            f"SELECT queue_id, tags, metadata FROM message_meta WHERE queue_id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for qid, tags, metadata in rows:
            out[str(qid)] = (list(json.loads(tags)), dict(json.loads(metadata)))
    return out


TAGGED_EVENTS = (
    "(SELECT e.*, t.value AS tag FROM events e JOIN message_meta m ON m.queue_id = e.queue_id,"
    " json_each(m.tags) t) tagged"
)
"""The events table with one row per (event, tag of its message): what statistics by tag count."""

TAGGED_EVENTS_PG = (
    "(SELECT e.*, t.value AS tag FROM events e JOIN message_meta m ON m.queue_id = e.queue_id,"
    " jsonb_array_elements_text(m.tags::jsonb) t(value)) tagged"
)
"""The same on PostgreSQL (``tags`` is JSON text in both backends)."""
