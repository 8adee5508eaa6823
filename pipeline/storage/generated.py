"""Secrets the gateway generates when the config gives none (the tracking/VERP key, the webhook
signing secret, SendGrid's webhook key): one file per data directory, or one row in the shared
PostgreSQL.

Why in the database with ``[storage] url``: a click lands on whichever node the load balancer
picks, so every node must verify the tokens every other node signed; a key generated per data
directory would make each node refuse the others' links. The first node to need a secret inserts
it (``INSERT ... ON CONFLICT DO NOTHING``, so nodes starting together agree on one) and every
node reads that row. A node that already has the file (it ran on SQLite before) offers the file's
value, so the links it sent keep working when it is the first; a secret in the config always wins
and never reaches this module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path


def _random() -> str:
    return secrets.token_urlsafe(32)


def file_secret(path: Path, make: Callable[[], str] = _random) -> str:
    """The secret in ``path`` (mode 0600), made once; a concurrent maker's file wins."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(make())
    return path.read_text().strip()


def shared_secret(url: str, name: str, seed: Path | None = None, make: Callable[[], str] = _random) -> str:
    """The secret called ``name`` in the shared database (``generated_secrets``, migration 9), made
    once by whichever node asks first; ``seed``: a file whose value is offered instead of a new one."""
    import psycopg

    from pipeline.storage.postgres import upgrade

    upgrade(url)  # the table exists before any store of this process may have opened the database
    offered = seed.read_text().strip() if seed is not None and seed.is_file() else make()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO generated_secrets (name, value, created_at) VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING",
            (name, offered, time.time()),
        )
        row = conn.execute("SELECT value FROM generated_secrets WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def generated_secret(name: str, data_dir: Path, url: str | None, make: Callable[[], str] = _random) -> str:
    """A generated secret: ``<data_dir>/<name>`` without ``[storage] url``, else the shared row."""
    if url is None:
        return file_secret(data_dir / name, make)
    return shared_secret(url, name, data_dir / name, make)
