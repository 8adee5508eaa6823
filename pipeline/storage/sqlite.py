"""SQLite opened the one way every store here needs it: WAL, ``synchronous=FULL``, a busy timeout.

The spool and the event store both go through this, so a PostgreSQL backend later replaces one
function per store, not every caller.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_sqlite(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (creating the folder) a SQLite database for concurrent use by several processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn
