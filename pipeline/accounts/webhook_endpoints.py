"""Webhook endpoints added over the management API (``POST /api/v1/webhooks``), stored next to the
credentials: ``credentials.db`` (SQLite) or the ``webhook_endpoints`` table of ``[storage] url``'s
PostgreSQL (migration 5), so every node's event recorder sees them.

Why a table and not the config file: a tenant adds its own receiver without the operator, and the
endpoints of the config file (``[webhooks]``, a credential's ``webhooks``) stay where they are,
read-only over the API. Each row is scoped to one credential (``NULL``: every event, an
administrator's) and may name the event types it wants (empty: all). The recorder asks
:meth:`WebhookEndpointStore.urls_for` once per event, so the rows are cached: SQLite re-reads when
another connection committed (``data_version``), PostgreSQL at most every ``SHARED_TTL`` seconds.
"""

from __future__ import annotations

import builtins
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.storage.statement import one_statement, open_store

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    credential  TEXT,
    events      TEXT NOT NULL DEFAULT '[]',
    created_by  TEXT,
    created_at  REAL NOT NULL,
    secret      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_credential ON webhook_endpoints(credential);
"""

_COLUMNS = "id, url, credential, events, created_by, created_at, secret"


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    id_, url, credential, events, created_by, created_at, secret = r
    return {
        "id": id_,
        "url": url,
        "credential": credential,
        "events": json.loads(events),
        "created_by": created_by,
        "created_at": created_at,
        "secret": secret,
    }


class WebhookEndpointStore:
    """Add, list, remove the API's webhook endpoints; :meth:`urls_for` for the event recorder.

    ``path``: the SQLite file (created on first write, as ``credentials add`` does); ``url``: the
    shared PostgreSQL. The file may not exist yet when the gateway starts (nobody added anything):
    then a look-up costs one ``stat`` at most every ``RECHECK`` seconds.
    """

    SHARED_TTL = 2.0
    RECHECK = 5.0
    STALE_WAIT = 1.0
    """Seconds a re-read waits for a connection; if the database is away the last rows serve on."""

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        if path is None and url is None:
            raise ValueError("a webhook endpoint store needs a path or a url")
        self.path, self.url = path, url
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pool: Any = None
        self._version: Any = None
        self._rows: list[dict[str, Any]] = []
        self._next_check = 0.0
        # urls_for's answers by (credential, event type), with the rows list they were computed from
        self._answers: tuple[list[dict[str, Any]] | None, dict[tuple[str | None, str | None], tuple[str, ...]]] = (
            None, {})

    # -- connection ---------------------------------------------------------------------------
    def _open(self, create: bool) -> bool:
        """Whether a connection is open (opening it if the file exists or ``create``)."""
        if self._conn is not None or self._pool is not None:
            return True
        if self.url is None:
            assert self.path is not None
            if not create and not self.path.exists():
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn, self._pool = open_store(self.path, self.url, SCHEMA, "a webhook endpoint store")
        return True

    def _q(
        self, sql: str, args: tuple[Any, ...] = (), wait: float | None = None
    ) -> tuple[builtins.list[tuple[Any, ...]], int]:
        return one_statement(self._conn, self._pool, sql, args, wait=wait, op="webhook_endpoints")

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- the API's operations -----------------------------------------------------------------
    def add(
        self, url: str, credential: str | None, events: builtins.list[str], created_by: str | None = None
    ) -> dict[str, Any]:
        """Store an endpoint; the row, with its signing secret (ids are random: they do not tell a tenant
        how many others exist; the secret signs this endpoint's deliveries, so a tenant can check them).
        A URL already stored for the same credential is a ``ValueError`` (one delivery per event)."""
        with self._lock:
            self._open(create=True)
            clash = self._q(
                "SELECT id FROM webhook_endpoints WHERE url = ? AND credential IS ?"
                if self._pool is None
                else "SELECT id FROM webhook_endpoints WHERE url = ? AND credential IS NOT DISTINCT FROM ?",
                (url, credential),
            )[0]
            if clash:
                raise ValueError(f"{url} is already an endpoint of this scope (id {clash[0][0]})")
            row = (
                f"wh_{secrets.token_hex(8)}",
                url,
                credential,
                json.dumps(sorted(set(events))),
                created_by,
                time.time(),
                f"whsec_{secrets.token_urlsafe(32)}",
            )
            self._q(f"INSERT INTO webhook_endpoints ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            self._version = None
        return _row(row)

    def set_events(self, endpoint_id: str, events: builtins.list[str]) -> dict[str, Any] | None:
        """Change an endpoint's event-type filter (empty: every event); the row, or ``None`` if unknown."""
        with self._lock:
            if not self._open(create=False):
                return None
            _, count = self._q(
                "UPDATE webhook_endpoints SET events = ? WHERE id = ?",
                (json.dumps(sorted(set(events))), endpoint_id),
            )
            self._version = None
        return self.get(endpoint_id) if count else None

    def remove(self, endpoint_id: str) -> bool:
        with self._lock:
            if not self._open(create=False):
                return False
            _, count = self._q("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            self._version = None
        return count > 0

    def get(self, endpoint_id: str) -> dict[str, Any] | None:
        return next((r for r in self.list() if r["id"] == endpoint_id), None)

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every stored endpoint, oldest first (cached; see the module docstring)."""
        return list(self._current())

    def _current(self) -> builtins.list[dict[str, Any]]:
        """The cached rows, re-read if they changed: the same list object until then (not to be modified)."""
        with self._lock:
            if not self._open(create=False):
                return []
            if self._pool is None:
                version: Any = self._conn.execute("PRAGMA data_version").fetchone()[0]
                fresh = version == self._version
            else:
                now = time.monotonic()
                fresh = self._version is not None and now - self._version < self.SHARED_TTL
                version = now
            if not fresh and self._pool is not None and self._version is not None and not self._pool.health.up:
                fresh = True  # the database is known to be away: don't wait on it, the last rows serve
            if not fresh:
                try:
                    rows = self._q(f"SELECT {_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id",
                                   wait=self.STALE_WAIT if self._pool is not None else None)[0]
                except Exception:
                    if self._pool is None or self._version is None:
                        raise
                    self._version = version  # the shared database is away: the last rows, again in SHARED_TTL
                    return self._rows
                self._rows = [_row(r) for r in rows]
                self._version = version
            return self._rows

    def secret_for(self, url: str, credential: str | None) -> bytes | None:
        """The signing secret of the endpoint a delivery to ``url`` of this credential's event came from
        (the credential's own row first, then a global one); ``None``: not an endpoint of the API."""
        rows = [r for r in self._current() if r["url"] == url and r["credential"] in (credential, None)]
        rows.sort(key=lambda r: r["credential"] is None)
        return rows[0]["secret"].encode("utf-8") if rows and rows[0]["secret"] else None

    def urls_for(self, credential: str | None, event_type: str | None) -> builtins.list[str]:
        """The URLs that want this event: global rows and the event's credential's, by event type."""
        if self.path is not None and self._conn is None and self.url is None:
            now = time.monotonic()
            if now < self._next_check:
                return []
            if not self.path.exists():
                self._next_check = now + self.RECHECK
                return []
        rows = self._current()
        answered_for, answers = self._answers
        if rows is not answered_for:  # the rows changed: forget the answers given for the old ones
            answers = {}
            self._answers = (rows, answers)  # one assignment: an answer always goes with its rows
        key = (credential, event_type)
        urls = answers.get(key)
        if urls is None:
            if len(answers) >= 10_000:  # bounded: credentials x event types
                answers.clear()
            urls = answers[key] = tuple(
                r["url"]
                for r in rows
                if (r["credential"] is None or r["credential"] == credential)
                and (not r["events"] or event_type is None or event_type in r["events"])
            )
        return list(urls)
