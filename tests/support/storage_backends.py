"""The two storage backends behind one test fixture (``backend`` in tests/conftest.py), so the
spool tests run unchanged against the embedded SQLite files and a real PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from pipeline.config import Config, parse_config


class Backend:
    """One backend's storage for one test: open its stores (again), read through another connection."""

    def __init__(self, kind: str, data_dir: Path, url: str | None) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.url = url

    def __repr__(self) -> str:
        return f"Backend({self.kind})"

    @property
    def overrides(self) -> dict[str, Any]:
        """Config keys that select this backend (merge into a test's config data)."""
        return {"storage": {"url": self.url}} if self.url else {}

    def export_env(self, monkeypatch: Any) -> None:
        """Point CLI runs (``SMTPGATE_DATA_DIR``, ``SMTPGATE_STORAGE_URL``) at this backend."""
        monkeypatch.setenv("SMTPGATE_DATA_DIR", str(self.data_dir))
        if self.url:
            monkeypatch.setenv("SMTPGATE_STORAGE_URL", self.url)
        else:
            monkeypatch.delenv("SMTPGATE_STORAGE_URL", raising=False)

    @property
    def config(self) -> Config:
        """A config whose ``[storage]`` points at this backend."""
        data: dict[str, Any] = {"gateway": {"data_dir": str(self.data_dir)}}
        if self.url:
            data["storage"] = {"url": self.url}
        return parse_config(data)

    def spool(self) -> Any:
        """A new spool object on this storage (a second one is a reopen, or a second node)."""
        from pipeline.spool import open_spool

        return open_spool(self.config)

    def event_store(self, policy: Any = None) -> Any:
        """A new event store object on this storage (default suppression policy unless given)."""
        if self.url is None:
            from pipeline.events import SqliteEventStore

            return SqliteEventStore(self.data_dir / "events.db", policy)
        from pipeline.events.postgres import PostgresEventStore

        return PostgresEventStore(self.url, policy)

    def suppression_list(self) -> Any:
        """The read-only stoplist admission uses, opened the way the suppression plugin opens it."""
        from pipeline.events import open_suppression_list

        return open_suppression_list(self.config)

    def fetch(self, sql: str, args: tuple[Any, ...] = (), db: str = "spool") -> list[tuple[Any, ...]]:
        """Read through a connection of its own (only committed rows are visible); ``?`` placeholders.
        ``db``: which SQLite file (``spool`` or ``events``); PostgreSQL has every table in one database."""
        if self.url is None:
            conn = sqlite3.connect(self.data_dir / f"{db}.db")
            try:
                return [tuple(r) for r in conn.execute(sql, args).fetchall()]
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url) as pg:
            return [tuple(r) for r in pg.execute(sql.replace("?", "%s"), args).fetchall()]  # type: ignore[arg-type]
