"""The event log read newest first, one page at a time: ``GET /api/v1/events`` and ``smtpgate events
list`` share this query, so the terminal and the API answer alike.

Keyset pagination on the event id (no ``OFFSET``); the type is inlined from the known types so the
partial index on ``rejected`` events can serve a refusal listing; a credential uses
``events(credential, type, id)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.contract.vocabulary import EventType

TYPES = tuple(str(t) for t in EventType)


class _Queryable(Protocol):
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class EventQuery:
    """Which events: all filters optional, combined with AND; ``before``: ids below this one (a page)."""

    type: str | None = None
    credential: str | None = None
    since: float | None = None
    until: float | None = None
    before: int | None = None


def event_page(store: _Queryable, q: EventQuery, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` events, newest first, and the id to continue below (``None``: last page)."""
    if q.type is not None and q.type not in TYPES:
        raise ValueError(f"type must be one of {', '.join(TYPES)}")
    clauses: list[str] = []
    args: list[Any] = []
    if q.type is not None:
        clauses.append(f"type = '{q.type}'")  # one of TYPES: a literal lets the partial index match
    for sql, value in (
        ("credential = ?", q.credential),
        ("time >= ?", q.since),
        ("time < ?", q.until),
        ("id < ?", q.before),
    ):
        if value is not None:
            clauses.append(sql)
            args.append(value)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = store.query(
        "SELECT id, type, time, queue_id, recipient, credential, campaign_id, letter_id, data FROM events"
        f"{where} ORDER BY id DESC LIMIT ?",
        (*args, limit + 1),
    )
    page = [
        {
            "id": int(id_),
            "type": type_,
            "time": float(t),
            "queue_id": qid,
            "recipient": rcpt,
            "credential": cred,
            "campaign_id": camp,
            "letter_id": letter,
            "data": json.loads(data) if data else {},
        }
        for id_, type_, t, qid, rcpt, cred, camp, letter, data in rows[:limit]
    ]
    return page, (page[-1]["id"] if len(rows) > limit else None)
