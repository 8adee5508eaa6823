"""One committed statement on whichever store a small table lives in (SQLite file or PostgreSQL pool).

A module of its own so that ``pipeline.storage.tx`` (which ``postgres`` imports) stays free of
PostgreSQL, and a SQLite-only process never imports psycopg.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.storage.sqlite import open_sqlite


def open_store(path: Path | None, url: str | None, schema: str, what: str) -> tuple[Any, Any]:
    """Where a small store lives: ``(SQLite connection with its schema applied, None)`` for ``path``,
    ``(None, a small PostgreSQL pool)`` for ``url``; the pair :func:`one_statement` takes."""
    if url is not None:
        from pipeline.storage.postgres import open_pool  # psycopg only where PostgreSQL is configured

        return None, open_pool(url, max_size=2)
    if path is None:
        raise ValueError(f"{what} needs a path or a url")
    conn = open_sqlite(path)
    conn.executescript(schema)
    return conn, None


def one_statement(
    conn: Any, pool: Any, sql: str, args: Sequence[Any] = (), *, wait: float | None = None, op: str | None = None
) -> tuple[list[tuple[Any, ...]], int]:
    """One committed statement (``?`` placeholders) on a SQLite connection in autocommit mode, or on a
    pooled PostgreSQL connection when ``pool`` is set (waiting at most ``wait`` s for it; ``op`` names
    it in ``/metrics``): its rows and rowcount. The small stores (credentials, API tokens, webhook
    endpoints) keep one of the two and call this, so their SQL is written once for both."""
    if pool is None:
        cur = conn.execute(sql, tuple(args))
        return [tuple(r) for r in cur.fetchall()], cur.rowcount
    from pipeline.storage.postgres import pg_sql  # psycopg only where PostgreSQL is configured

    with pool.connection(timeout=wait, op=op) as pg:
        pcur = pg.execute(pg_sql(sql), tuple(args))
        rows = pcur.fetchall() if pcur.description is not None else []
        return [tuple(r) for r in rows], pcur.rowcount
