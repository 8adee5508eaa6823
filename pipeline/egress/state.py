"""What direct delivery remembers across restarts and shows to ``smtpgate queue list``:
suspended destinations, cached MTA-STS policies and per-address daily counts (warm-up).

``<data_dir>/egress.db`` (SQLite, ``synchronous=NORMAL``: losing the last write in a power cut
costs a shorter suspension or one policy re-fetch, never mail). The server writes it, the queue
tools only read it. Writes are small and rare (a suspension, a fetched policy, a count every few
messages), so they run inline.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.storage.sqlite import open_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS suspensions (
    site    TEXT NOT NULL,
    source  TEXT NOT NULL,
    until   REAL NOT NULL,
    reason  TEXT NOT NULL,
    since   REAL NOT NULL,
    PRIMARY KEY (site, source)
);
CREATE TABLE IF NOT EXISTS mta_sts (
    domain     TEXT PRIMARY KEY,
    policy_id  TEXT NOT NULL,
    policy     TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tlsrpt (
    day         TEXT NOT NULL,
    domain      TEXT NOT NULL,
    policy_type TEXT NOT NULL,
    policy      TEXT NOT NULL,
    mx          TEXT NOT NULL,
    result      TEXT NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (day, domain, policy_type, policy, mx, result)
);
CREATE TABLE IF NOT EXISTS source_counts (
    address TEXT NOT NULL,
    day     TEXT NOT NULL,
    sent    INTEGER NOT NULL,
    PRIMARY KEY (address, day)
);
"""


@dataclass(frozen=True)
class Suspension:
    site: str
    source: str
    until: float
    reason: str
    since: float


class EgressState:
    """The egress's small persistent state; one instance per data directory and process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_sqlite(path, synchronous="NORMAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    # -- suspensions ----------------------------------------------------------------------

    def suspend(self, s: Suspension) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO suspensions VALUES (?, ?, ?, ?, ?)", (s.site, s.source, s.until, s.reason, s.since)
            )

    def lift(self, site: str, source: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM suspensions WHERE site=? AND source=?", (site, source))

    def suspensions(self, now: float) -> list[Suspension]:
        """Suspensions still in force at ``now``, soonest end first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT site, source, until, reason, since FROM suspensions WHERE until > ? ORDER BY until", (now,)
            ).fetchall()
        return [Suspension(*row) for row in rows]

    # -- MTA-STS cache --------------------------------------------------------------------

    def save_policy(self, domain: str, policy_id: str, policy: dict[str, Any], fetched_at: float, expires_at: float) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO mta_sts VALUES (?, ?, ?, ?, ?)",
                (domain, policy_id, json.dumps(policy), fetched_at, expires_at),
            )

    def load_policies(self, now: float) -> list[tuple[str, str, dict[str, Any], float, float]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT domain, policy_id, policy, fetched_at, expires_at FROM mta_sts WHERE expires_at > ?", (now,)
            ).fetchall()
        return [(d, i, json.loads(p), f, e) for d, i, p, f, e in rows]

    # -- per-address daily counts (warm-up) -----------------------------------------------

    def count(self, address: str, day: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT sent FROM source_counts WHERE address=? AND day=?", (address, day)
            ).fetchone()
        return int(row[0]) if row else 0

    def add_count(self, address: str, day: str, n: int) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO source_counts VALUES (?, ?, ?) ON CONFLICT(address, day) DO UPDATE SET sent = sent + ?",
                (address, day, n, n),
            )
            self._conn.execute("DELETE FROM source_counts WHERE day < date(?, '-7 days')", (day,))

    # -- TLS-RPT counts -------------------------------------------------------------------

    def add_tlsrpt(self, day: str, domain: str, policy_type: str, policy: str, mx: str, result: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO tlsrpt VALUES (?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT(day, domain, policy_type, policy, mx, result) DO UPDATE SET count = count + 1",
                (day, domain, policy_type, policy, mx, result),
            )

    def tlsrpt_rows(self, day: str) -> list[tuple[str, str, str, str, str, int]]:
        """(domain, policy_type, policy, mx, result, count) of ``day``; older days than 30 are dropped."""
        with self._lock:
            self._conn.execute("DELETE FROM tlsrpt WHERE day < date(?, '-30 days')", (day,))
            return [tuple(r) for r in self._conn.execute(  # type: ignore[misc]
                "SELECT domain, policy_type, policy, mx, result, count FROM tlsrpt WHERE day=? "
                "ORDER BY domain, policy_type, mx, result", (day,)
            )]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def read_suspensions(data_dir: Path, now: float) -> list[Suspension]:
    """For the queue tools: suspensions in force, without creating the file when there is none."""
    path = data_dir / "egress.db"
    if not path.exists():
        return []
    state = EgressState(path)
    try:
        return state.suspensions(now)
    finally:
        state.close()
