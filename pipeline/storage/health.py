"""Is the database there? One record per database a process talks to, fed by every pooled operation.

Why: while PostgreSQL is down or refusing connections every SMTP session, every claim and every
click fails; a line per failure would bury the one fact an operator needs ("the database went
away at 12:00:03, came back at 12:00:13"). Every operation on a pool from :func:`observed_pool`
reports here: the first failure that means "unreachable" (a connection error, a pool time-out,
a server shutdown) logs once and turns ``smtpgate_db_up`` to 0; the next success logs once that
it is back (with the outage's length and failed operations) and turns it to 1. Errors are counted
by operation and every operation's duration (connection wait and COMMIT included) is a histogram
sample, all of it in ``/metrics`` (:mod:`pipeline.tracking.metrics`).

Without psycopg installed nothing here is used (the SQLite files are local).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("smtpgate.storage")

# psycopg_pool warns on every failed reconnection attempt and every dead connection it discards:
# dozens of lines a second during an outage. The outage is logged here, once each way, instead.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

SUSPECT_SECONDS = 30.0
"""Seconds after an outage during which pooled connections are checked before use."""
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def database_name(url: str) -> str:
    """``host:port/dbname`` of a URL: what logs and labels name (never the password)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


class DatabaseHealth:
    """Up or down, errors by operation, operation latency, the pools on it (for their sizes)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.down_since = 0.0
        self.changed_at = 0.0  # time.monotonic() of the last transition (either way)
        self.suspect_until = 0.0  # until then, pooled connections are checked before use (see ``check``)
        self.outage_errors = 0
        self.last_error = ""
        self._lock = threading.Lock()
        self.pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self.registry = CollectorRegistry(auto_describe=True)
        self.errors = Counter("smtpgate_db_errors_total", "Failed database operations, by operation "
                              "(enqueue, claim, record, event_write, lookup ...).", ["op"], registry=self.registry)
        self.seconds = Histogram("smtpgate_db_operation_seconds", "Seconds per database operation on a pooled "
                                 "connection (waiting for the connection and the COMMIT included), by operation.",
                                 ["op"], registry=self.registry, buckets=SECONDS_BUCKETS)

    def ok(self, op: str, seconds: float, started: float) -> None:
        """A success; ``started`` (``time.monotonic()``) must follow the outage's start to end it: an
        operation that began before the database went away proves nothing about now."""
        self.seconds.labels(op).observe(seconds)
        if self.up:
            return
        with self._lock:
            if self.up or started < self.changed_at:
                return
            self.up = True
            self.changed_at = time.monotonic()
            self.suspect_until = self.changed_at + SUSPECT_SECONDS
            outage, errors = time.time() - self.down_since, self.outage_errors
        log.warning("database %s reachable again after %.1f s (%d failed operations during the outage)",
                    self.name, outage, errors)

    def failed(self, op: str, exc: BaseException, started: float) -> None:
        """A failure; it starts an outage when it means "unreachable" and the operation began after
        the database was last seen coming back (a connection killed during the outage and used just
        after it is not a new outage)."""
        self.errors.labels(op).inc()
        if not unreachable(exc):
            return
        with self._lock:
            self.outage_errors += 1
            self.last_error = f"{type(exc).__name__}: {str(exc).strip()}"[:300]
            if not self.up or started < self.changed_at:
                return
            self.up = False
            self.down_since = time.time()
            self.changed_at = time.monotonic()
            self.suspect_until = float("inf")
            self.outage_errors = 1
        log.error("database %s unreachable (%s, in %s): SMTP answers 451, delivery pauses, tracking holds its "
                  "events in memory; retrying (logged again when it is back)", self.name, self.last_error, op)

    def check(self, conn: Any) -> None:
        """The pools' ``check`` callback: during an outage and for ``SUSPECT_SECONDS`` after it, a
        pooled connection is tried (one empty round trip) before it is handed out, so connections the
        outage killed are replaced instead of failing the first operations after it; otherwise free."""
        if time.monotonic() < self.suspect_until:
            from psycopg_pool import ConnectionPool

            ConnectionPool.check_connection(conn)


AWAY_SQLSTATES = ("08", "53", "57P")
"""SQLSTATE prefixes that mean the server is away or refusing: connection exceptions, insufficient
resources (too many connections), operator intervention (shutdown, session terminated)."""


def unreachable(exc: BaseException) -> bool:
    """The errors that mean the database is away (not a bad statement): connection failures (no
    SQLSTATE: the client saw the socket go or could not connect), a pool that found no connection
    in time, a server shutting down or killing the session. A deadlock, a serialization failure or
    a cancelled statement is an ``OperationalError`` too, but the database is there."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is installed wherever a pool exists
        return False
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(AWAY_SQLSTATES)


_HEALTH: dict[str, DatabaseHealth] = {}
_HEALTH_LOCK = threading.Lock()


def health_of(url: str) -> DatabaseHealth:
    """The process's one record for the database at ``url`` (every pool on it reports there)."""
    name = database_name(url)
    with _HEALTH_LOCK:
        if name not in _HEALTH:
            _HEALTH[name] = DatabaseHealth(name)
        return _HEALTH[name]


@contextmanager
def observed(health: DatabaseHealth, op: str, connect: Any) -> Iterator[Any]:
    """Time ``connect`` (a pool's connection context manager) and report success or failure."""
    import psycopg

    started = time.monotonic()
    start = time.perf_counter()
    try:
        with connect as conn:
            yield conn
    except psycopg.Error as exc:
        health.failed(op, exc, started)
        raise
    health.ok(op, time.perf_counter() - start, started)
