"""The event store, webhook outbox and stoplist in PostgreSQL (``[storage] url``).

The queries are the SQLite backend's (:mod:`pipeline.events.store`); this module supplies the
primitives on a connection pool: reads on any pooled connection, writes in one transaction that
returns only after the COMMIT (``synchronous_commit=on``). The tables live in the same database
as the PostgreSQL spool, so every node reads and writes the same events, outbox and stoplist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipeline.events.store import EventStoreBase, SuppressionPolicy, Tx, is_suppressed, suppression_reason
from pipeline.storage.postgres import open_pool, pg_sql, pg_tx

R = TypeVar("R")

HOT_WAIT = 1.0
"""Seconds an event-loop look-up waits for a pooled connection."""
LOOKUP_WAIT = 1.0
"""Seconds a RCPT waits for its stoplist look-up, all included, before it fails closed (``451``)."""


class PostgresEventStore(EventStoreBase):
    """Events, webhook outbox and suppression list in a (shared) PostgreSQL database."""

    dialect = "postgres"

    def __init__(self, url: str, policy: SuppressionPolicy | None = None, *, pool_size: int = 10) -> None:
        super().__init__(policy)
        self.url = url
        self._pool = open_pool(url, max_size=pool_size, name="events")

    def _fetch(self, sql: str, args: Sequence[Any] = (), *, hot: bool = False) -> list[tuple[Any, ...]]:
        # Hot look-ups run on the event loop (tracking, admission): while the database is away they
        # must fail fast (the callers fall back), not stall every session for the pool's full wait.
        with self._pool.connection(timeout=HOT_WAIT if hot else None, op="lookup" if hot else "event_read") as conn:
            return [tuple(r) for r in conn.execute(pg_sql(sql), tuple(args)).fetchall()]

    def _transaction(self, fn: Callable[[Tx], R]) -> R:
        with self._pool.connection(op="event_write") as conn, conn.transaction():
            return fn(pg_tx(conn))

    def close(self) -> None:
        self._pool.close()


class PostgresSuppressionList:
    """The read-only stoplist view admission uses (one indexed look-up per RCPT), on PostgreSQL.

    RCPT uses :meth:`reason_async`: the round trip runs in this list's own threads (as many as
    pooled connections), never on the event loop, and a RCPT waits for it ``LOOKUP_WAIT`` seconds
    at most; when the database is slow or away the SMTP sessions go on, and that RCPT hears ``451``.
    """

    def __init__(self, url: str) -> None:
        self._pool = open_pool(url, max_size=2, name="stoplist")
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="stoplist")

    def _fetch(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._pool.connection(timeout=HOT_WAIT, op="stoplist_lookup") as conn:  # per RCPT
            return [tuple(r) for r in conn.execute(pg_sql(sql), tuple(args)).fetchall()]

    def contains(self, address: str, credential: str | None = None) -> bool:
        return is_suppressed(self._fetch, address, credential)

    def reason(self, address: str, credential: str | None = None) -> str | None:
        return suppression_reason(self._fetch, address, credential)

    async def reason_async(self, address: str, credential: str | None = None) -> str | None:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._threads, self.reason, address, credential),
                                      LOOKUP_WAIT)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._pool.close()
