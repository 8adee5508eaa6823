"""Bearer tokens for the management API (``smtpgate api-tokens``), stored in ``credentials.db``, or
in the ``api_tokens`` table of ``[storage] url``'s PostgreSQL (migration 8), which every node reads.

A token is ``sgt_<id>_<secret>`` with 256 random bits of secret. Only its SHA-256 is stored: the
secret is random, so a slow salted hash (as for SMTP passwords, which people choose) would add a
scrypt per API request and no protection. The id finds the row, so a wrong token costs one
look-up and one constant-time compare. A token with a ``credential`` is a tenant's: the API shows
it only that credential's data; one without is an administrator's. Nothing is cached: every request looks its token up, so a token
revoked on one node is refused by every node at its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.storage.statement import one_statement, open_store

TOKEN_PREFIX = "sgt_"

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    credential  TEXT,
    token_hash  TEXT NOT NULL,
    created_at  REAL NOT NULL
);
"""


class ApiTokenError(ValueError):
    """A token that cannot be added or revoked (bad name, duplicate, unknown)."""


@dataclass(frozen=True)
class ApiPrincipal:
    """Who a valid token speaks for: ``credential=None`` is an administrator."""

    token_id: str
    name: str
    credential: str | None

    @property
    def admin(self) -> bool:
        return self.credential is None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


HOT_WAIT = 1.0
"""Seconds a token look-up (on the API's event loop) waits for a pooled PostgreSQL connection."""


class ApiTokenStore:
    """The ``api_tokens`` table: add/list/revoke for the CLI, ``verify`` for the API.

    ``path``: the SQLite file; ``url``: the PostgreSQL several nodes share. Same SQL on both.
    """

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        self.path, self.url = path, url
        self._lock = threading.Lock()
        self._conn, self._pool = open_store(path, url, SCHEMA, "an API token store")

    def _q(self, sql: str, args: Sequence[Any] = (), *, hot: bool = False) -> tuple[list[tuple[Any, ...]], int]:
        """One statement, committed (``?`` placeholders): its rows and rowcount. ``hot``: on the event
        loop, so a missing database fails within ``HOT_WAIT`` seconds instead of stalling every request."""
        if self._pool is None:
            with self._lock:
                return one_statement(self._conn, None, sql, args)
        return one_statement(None, self._pool, sql, args, wait=HOT_WAIT if hot else None, op="api_tokens")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            return
        with self._lock:
            self._conn.close()

    def add(self, name: str, credential: str | None = None) -> str:
        """Store a new token's hash; the token itself is returned once and never again."""
        if not name or len(name) > 100 or not name.isprintable():
            raise ApiTokenError("token names are 1-100 printable characters")
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        try:
            self._q(
                "INSERT INTO api_tokens (id, name, credential, token_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                (token_id, name, credential, _digest(token), time.time()),
            )
        except Exception as exc:
            if "unique" in str(exc).lower():  # SQLite's UNIQUE constraint, PostgreSQL's unique_violation
                raise ApiTokenError(f"a token named {name!r} already exists") from None
            raise
        return token

    def list(self) -> list[dict[str, Any]]:
        """Every token without its hash (for ``api-tokens list``)."""
        rows = self._q("SELECT id, name, credential, created_at FROM api_tokens ORDER BY name")[0]
        keys = ("id", "name", "credential", "created_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def revoke(self, name: str) -> None:
        """Delete a token (by name or id); it stops working at its next request, on every node."""
        if self._q("DELETE FROM api_tokens WHERE name = ? OR id = ?", (name, name))[1] == 0:
            raise ApiTokenError(f"no API token named {name!r}")

    def verify(self, token: str) -> ApiPrincipal | None:
        """The principal of a valid token, else ``None`` (constant-time compare of the hash)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200 or "\x00" in token:
            return None
        token_id, sep, _ = token[len(TOKEN_PREFIX):].partition("_")
        if not sep:
            return None
        rows = self._q("SELECT name, credential, token_hash FROM api_tokens WHERE id = ?", (token_id,), hot=True)[0]
        if not rows or not hmac.compare_digest(_digest(token), rows[0][2]):
            return None
        return ApiPrincipal(token_id, rows[0][0], rows[0][1])

    def principal(self, token_id: str) -> ApiPrincipal | None:
        """The principal of a token that still exists, by id: a console session remembers the id,
        never the token, and ends when the token is revoked."""
        rows = self._q("SELECT name, credential FROM api_tokens WHERE id = ?", (token_id,), hot=True)[0]
        return ApiPrincipal(token_id, rows[0][0], rows[0][1]) if rows else None


def open_api_token_store(url: str | None, data_dir: Path) -> ApiTokenStore:
    """The API tokens of a gateway: ``[storage] url``'s shared table, else ``<data_dir>/credentials.db``."""
    return ApiTokenStore(url=url) if url is not None else ApiTokenStore(data_dir / "credentials.db")
