"""SQLite spool (WAL, ``synchronous=FULL``).

Concurrent sessions' commits are batched: every ``enqueue`` waits on one shared transaction
that a single writer commits, so N sessions finishing DATA together cost one fsync, not N.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from pipeline.context import MessageContext
from pipeline.storage import open_sqlite

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
    PRIMARY KEY (queue_id, recipient)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(state, next_attempt);
"""


class SqliteSpool:
    """Embedded spool in ``<data_dir>/spool.db``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_sqlite(path)
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._pending: list[tuple[tuple[object, ...], list[str], asyncio.Future[None]]] = []
        self._flushing = False

    async def enqueue(self, ctx: MessageContext, data: bytes, recipients: list[str]) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        row = (ctx.queue_id, ctx.message.mail_from or "", data, json.dumps(ctx.to_record()), time.time())
        self._pending.append((row, list(recipients), fut))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self._commit, [(r, rc) for r, rc, _ in batch])
                except Exception as exc:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._flushing = False

    def _commit(self, batch: list[tuple[tuple[object, ...], list[str]]]) -> None:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                for row, rcpts in batch:
                    cur.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", row)
                    cur.executemany(
                        "INSERT INTO recipients (queue_id, recipient, updated_at) VALUES (?, ?, ?)",
                        [(row[0], r, now) for r in rcpts],
                    )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
