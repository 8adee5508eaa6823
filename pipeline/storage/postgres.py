"""PostgreSQL opened the one way every store needs it, and its versioned schema migrations.

Why one schema for every store: several gateway nodes share one database, and the spool, the
events, the webhook outbox and the stoplist must be able to commit together (issue 11, point 3),
which needs them in one database. Migrations are numbered, applied in order, each in the same
transaction as its row in ``schema_migrations``, under a transaction-scoped advisory lock: two
nodes starting at once serialise, and the second finds nothing left to do. Migrations only add
(tables, columns, indexes), so nodes of the previous release keep working during a rolling upgrade.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from pipeline.storage.health import DatabaseHealth, health_of, observed
from pipeline.storage.tx import Tx

MIGRATION_LOCK = 0x736D7470  # "smtp": the advisory lock key every node's migrator takes

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "spool, events, webhook outbox, suppression",
        """
        CREATE TABLE messages (
            queue_id   TEXT PRIMARY KEY,
            mail_from  TEXT NOT NULL,
            data       BYTEA NOT NULL,
            context    TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE recipients (
            queue_id        TEXT NOT NULL REFERENCES messages(queue_id) ON DELETE CASCADE,
            recipient       TEXT NOT NULL,
            state           TEXT NOT NULL DEFAULT 'queued',
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt    DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_reply      TEXT,
            updated_at      DOUBLE PRECISION NOT NULL,
            lease_until     DOUBLE PRECISION NOT NULL DEFAULT 0,
            plugin_failures INTEGER NOT NULL DEFAULT 0,
            next_hop        TEXT,
            PRIMARY KEY (queue_id, recipient)
        );
        CREATE INDEX recipients_due ON recipients(state, next_attempt);
        CREATE TABLE events (
            id           BIGSERIAL PRIMARY KEY,
            type         TEXT NOT NULL,
            time         DOUBLE PRECISION NOT NULL,
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
        CREATE INDEX events_time ON events(time);
        CREATE INDEX events_campaign ON events(campaign_id, time);
        CREATE INDEX events_copy ON events(queue_id, recipient, type);
        CREATE TABLE webhook_outbox (
            id           BIGSERIAL PRIMARY KEY,
            event_id     BIGINT NOT NULL REFERENCES events(id),
            url          TEXT NOT NULL,
            state        TEXT NOT NULL DEFAULT 'pending',
            attempts     INTEGER NOT NULL DEFAULT 0,
            next_attempt DOUBLE PRECISION NOT NULL,
            last_error   TEXT,
            updated_at   DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX outbox_due ON webhook_outbox(state, next_attempt);
        CREATE TABLE suppression (
            address  TEXT NOT NULL,
            scope    TEXT NOT NULL,
            reason   TEXT NOT NULL,
            time     DOUBLE PRECISION NOT NULL,
            event_id BIGINT,
            PRIMARY KEY (address, scope)
        );
        """,
    ),
    (
        2,
        "message metadata (vendor dialects' tags and metadata, once per queue id)",
        """
        CREATE TABLE message_meta (
            queue_id TEXT PRIMARY KEY,
            tags     TEXT NOT NULL DEFAULT '[]',
            metadata TEXT NOT NULL DEFAULT '{}'
        );
        """,
    ),
    (
        3,
        "credentials (smtpgate credentials, shared by every node)",
        """
        CREATE TABLE credentials (
            name        TEXT PRIMARY KEY,
            kind        TEXT NOT NULL,
            username    TEXT,
            key_id      TEXT UNIQUE,
            secret_hash TEXT,
            options     TEXT NOT NULL DEFAULT '{}',
            disabled    INTEGER NOT NULL DEFAULT 0,
            created_at  DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    (
        4,
        "events.origin: idempotent events from an outbox",
        """
        ALTER TABLE events ADD COLUMN origin TEXT;
        CREATE UNIQUE INDEX events_origin ON events(origin);
        """,
    ),
    (
        5,
        "events per credential (statistics, GET /api/v1/events) and refusals (type rejected)",
        """
        CREATE INDEX events_credential ON events(credential, type, id);
        CREATE INDEX events_rejected ON events(id) WHERE type = 'rejected';
        """,
    ),
    (
        6,
        "webhook endpoints added over the management API (pipeline/accounts/webhook_endpoints.py)",
        """
        CREATE TABLE webhook_endpoints (
            id          TEXT PRIMARY KEY,
            url         TEXT NOT NULL,
            credential  TEXT,
            events      TEXT NOT NULL DEFAULT '[]',
            created_by  TEXT,
            created_at  DOUBLE PRECISION NOT NULL,
            secret      TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX webhook_endpoints_credential ON webhook_endpoints(credential);
        """,
    ),
    (
        7,
        "the message log (smtpgate messages, GET /api/v1/messages), shared by every node",
        # named message_log*: the spool's table is already called messages in this database
        """
        CREATE TABLE message_log (
            id          BIGSERIAL PRIMARY KEY,
            queue_id    TEXT NOT NULL UNIQUE,
            accepted_at DOUBLE PRECISION NOT NULL,
            mail_from   TEXT NOT NULL,
            sender      TEXT NOT NULL,
            subject     TEXT,
            message_id  TEXT,
            credential  TEXT,
            campaign_id TEXT,
            letter_id   TEXT,
            size        INTEGER NOT NULL DEFAULT 0,
            info        TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX message_log_sender ON message_log(sender, id);
        CREATE INDEX message_log_message_id ON message_log(message_id);
        CREATE INDEX message_log_campaign ON message_log(campaign_id, id);
        CREATE INDEX message_log_credential ON message_log(credential, id);
        CREATE INDEX message_log_accepted_at ON message_log(accepted_at);
        CREATE TABLE message_log_recipients (
            queue_id   TEXT NOT NULL,
            recipient  TEXT NOT NULL,
            state      TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            copy       TEXT,
            PRIMARY KEY (queue_id, recipient)
        );
        CREATE INDEX message_log_recipients_address ON message_log_recipients(recipient, queue_id);
        """,
    ),
    (
        8,
        "API tokens (smtpgate api-tokens, the management API's bearer tokens), shared by every node",
        """
        CREATE TABLE api_tokens (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            credential  TEXT,
            token_hash  TEXT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    (
        9,
        "generated secrets (tracking/VERP key, webhook secret) every node must share (pipeline/storage/generated.py)",
        """
        CREATE TABLE generated_secrets (
            name       TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
]
LATEST = MIGRATIONS[-1][0]


@dataclass(frozen=True)
class SchemaStatus:
    """What ``smtpgate db status`` prints: applied versions (with when) and what is pending."""

    applied: list[tuple[int, str, float]]
    pending: list[tuple[int, str]]

    @property
    def current(self) -> int:
        return max((v for v, _, _ in self.applied), default=0)


def _ensure_table(conn: psycopg.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
    )


def upgrade(url: str) -> list[int]:
    """Apply every pending migration (one transaction, under the advisory lock); the versions applied."""
    with psycopg.connect(url) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            _ensure_table(conn)
            done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
            applied = []
            for version, name, sql in MIGRATIONS:
                if version in done:
                    continue
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s, %s)", (version, name, time.time())
                )
                applied.append(version)
    return applied


def status(url: str) -> SchemaStatus:
    """Applied and pending migrations (reads only; creates nothing)."""
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        rows: list[tuple[int, str, float]] = []
        if exists and exists[0] is not None:
            rows = [
                (int(v), str(n), float(t))
                for v, n, t in conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
            ]
    done = {v for v, _, _ in rows}
    return SchemaStatus(rows, [(v, n) for v, n, _ in MIGRATIONS if v not in done])


CONNECT_WAIT = 10.0
"""Seconds a caller waits for a pooled connection while the database is unreachable."""
RECONNECT_GIVE_UP = 1.0
"""Seconds a pool's reconnection attempt lasts (tries at 0 and ~1 s) before it gives up; the next
caller starts a new one. psycopg_pool's own backoff doubles without bound (1, 2, 4 ... s for up to
5 minutes), so after a 30 s outage the first new connection could come 30 s after the database;
this way it comes within about a second, whatever the outage's length."""


def _configure(conn: psycopg.Connection) -> None:
    # 250 only after a COMMIT that reached the disk: never trust a server default that says otherwise.
    conn.execute("SET synchronous_commit = on")
    conn.commit()


class ObservedPool(ConnectionPool):
    """A pool whose every ``connection()`` reports to the database's :class:`DatabaseHealth`:
    up/down logged once per outage, errors by operation and latency in ``/metrics``."""

    health: DatabaseHealth

    @contextmanager
    def connection(self, timeout: float | None = None, op: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; ``op`` names the operation in ``/metrics`` (default: the pool's name)."""
        with observed(self.health, op or self.name, super().connection(timeout)) as conn:
            yield conn


def open_pool(url: str, *, max_size: int = 10, migrate: bool = True, name: str = "other") -> ObservedPool:
    """A connection pool on ``url`` with ``synchronous_commit=on``, the schema upgraded first.

    Connections are made on demand (``min_size=1``): a CLI command needs one, a node more. The pool
    reconnects by itself after the server restarts; a caller sees the failed statement's error, or
    waits at most ``CONNECT_WAIT`` seconds for a connection (an SMTP client then hears ``451``
    while its connection is still open, not a time-out). ``name``: the store, as ``/metrics`` labels it.
    """
    if migrate:
        upgrade(url)
    health = health_of(url)
    pool = ObservedPool(
        url, min_size=1, max_size=max_size, configure=_configure, open=False, name=name, timeout=CONNECT_WAIT,
        reconnect_timeout=RECONNECT_GIVE_UP, check=health.check,
    )
    pool.health = health
    pool.health.pools.add(pool)
    pool.open(wait=True, timeout=30.0)
    return pool


def pg_tx(conn: psycopg.Connection[Any]) -> Tx:
    """One statement at a time inside ``conn``'s open transaction, shared SQL in (``?``), rows and
    rowcount out: the ``Tx`` shape of :mod:`pipeline.events.store`, so an event can be written in
    another store's transaction (the spool's, when a result and its event commit together)."""

    def tx(sql: str, args: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        cur = conn.execute(pg_sql(sql), tuple(args))
        rows = cur.fetchall() if cur.description is not None else []
        return [tuple(r) for r in rows], cur.rowcount

    return tx


def pg_sql(sql: str) -> bytes:
    """Shared SQL (``?`` placeholders, both engines' syntax) for psycopg (``%s``; a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s").encode()
