"""Bearer tokens for the management API (``smtpgate api-tokens``), stored in ``credentials.db``.

A token is ``sgt_<id>_<secret>`` with 256 random bits of secret. Only its SHA-256 is stored: the
secret is random, so a slow salted hash (as for SMTP passwords, which people choose) would add a
scrypt per API request and no protection. The id finds the row, so a wrong token costs one
look-up and one constant-time compare. A token with a ``credential`` is a tenant's: the API shows
it only that credential's data; one without is an administrator's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.storage.sqlite import open_sqlite

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


class ApiTokenStore:
    """The ``api_tokens`` table: add/list/revoke for the CLI, ``verify`` for the API."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_sqlite(path)
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(self, name: str, credential: str | None = None) -> str:
        """Store a new token's hash; the token itself is returned once and never again."""
        if not name or len(name) > 100 or not name.isprintable():
            raise ApiTokenError("token names are 1-100 printable characters")
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO api_tokens (id, name, credential, token_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                    (token_id, name, credential, _digest(token), time.time()),
                )
            except Exception as exc:
                if "UNIQUE" in str(exc):
                    raise ApiTokenError(f"a token named {name!r} already exists") from None
                raise
        return token

    def list(self) -> list[dict[str, Any]]:
        """Every token without its hash (for ``api-tokens list``)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, credential, created_at FROM api_tokens ORDER BY name"
            ).fetchall()
        keys = ("id", "name", "credential", "created_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def revoke(self, name: str) -> None:
        """Delete a token (by name or id); it stops working at its next request."""
        with self._lock:
            cur = self._conn.execute("DELETE FROM api_tokens WHERE name = ? OR id = ?", (name, name))
        if cur.rowcount == 0:
            raise ApiTokenError(f"no API token named {name!r}")

    def verify(self, token: str) -> ApiPrincipal | None:
        """The principal of a valid token, else ``None`` (constant-time compare of the hash)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        token_id, sep, _ = token[len(TOKEN_PREFIX):].partition("_")
        if not sep:
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT name, credential, token_hash FROM api_tokens WHERE id = ?", (token_id,)
            ).fetchone()
        if row is None or not hmac.compare_digest(_digest(token), row[2]):
            return None
        return ApiPrincipal(token_id, row[0], row[1])

    def principal(self, token_id: str) -> ApiPrincipal | None:
        """The principal of a token that still exists, by id: a console session remembers the id,
        never the token, and ends when the token is revoked."""
        with self._lock:
            row = self._conn.execute("SELECT name, credential FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
        return None if row is None else ApiPrincipal(token_id, row[0], row[1])
