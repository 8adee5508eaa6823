"""[storage] url and the PostgreSQL schema migrations (real server: tests/support/pg_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from pipeline.config import ConfigError, parse_config
from pipeline.storage import postgres

ROOT = Path(__file__).resolve().parent.parent


def test_default_storage_is_the_embedded_sqlite(monkeypatch):
    monkeypatch.delenv("SMTPGATE_STORAGE_URL", raising=False)
    assert parse_config({}).storage.url is None


def test_url_from_env_secret_file_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SMTPGATE_STORAGE_URL", raising=False)
    monkeypatch.setenv("PG_URL", "postgresql://u:p@db:5432/mail")
    assert parse_config({"storage": {"url": "env:PG_URL"}}).storage.url == "postgresql://u:p@db:5432/mail"
    secret = tmp_path / "url"
    secret.write_text("postgres://u:p@db/mail\n")
    assert parse_config({"storage": {"url": f"file:{secret}"}}).storage.url == "postgres://u:p@db/mail"
    monkeypatch.setenv("SMTPGATE_STORAGE_URL", "postgresql://env@db/x")
    assert parse_config({}).storage.url == "postgresql://env@db/x"
    # the file wins over the environment, as for data_dir
    assert parse_config({"storage": {"url": "postgresql://file@db/y"}}).storage.url == "postgresql://file@db/y"


def test_unsupported_scheme_is_a_config_error(monkeypatch):
    monkeypatch.delenv("SMTPGATE_STORAGE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"storage\.url: unsupported storage url 'mysql'"):
        parse_config({"storage": {"url": "mysql://db/x"}}, "smtpgate.toml")
    monkeypatch.setenv("SMTPGATE_STORAGE_URL", "sqlite:///x")
    with pytest.raises(ConfigError, match=r"SMTPGATE_STORAGE_URL"):
        parse_config({})


def test_upgrade_applies_once_and_concurrent_starts_serialise(pg_url):
    assert postgres.status(pg_url).pending == [(v, n) for v, n, _ in postgres.MIGRATIONS]
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(postgres.upgrade(pg_url))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(len, results)) == [0, 0, 0, len(postgres.MIGRATIONS)]  # one node migrated, three waited
    st = postgres.status(pg_url)
    assert st.pending == [] and st.current == postgres.LATEST
    with psycopg.connect(pg_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"messages", "recipients", "events", "webhook_outbox", "suppression", "schema_migrations"} <= tables


def test_pool_connections_commit_synchronously(pg_url):
    pool = postgres.open_pool(pg_url, max_size=2)
    try:
        with pool.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    finally:
        pool.close()


def _cli(*args: str, url: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SMTPGATE_DATA_DIR": str(tmp_path / "data")}
    env.pop("SMTPGATE_STORAGE_URL", None)
    if url:
        env["SMTPGATE_STORAGE_URL"] = url
    return subprocess.run([sys.executable, "-m", "pipeline.app.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_db_status_and_upgrade_commands(pg_url, tmp_path):
    before = _cli("db", "status", url=pg_url, tmp_path=tmp_path)
    assert before.returncode == 1 and "pending" in before.stdout and "schema version 0 of" in before.stdout
    up = _cli("db", "upgrade", url=pg_url, tmp_path=tmp_path)
    assert up.returncode == 0 and "applied migrations 1" in up.stdout
    assert "up to date" in _cli("db", "upgrade", url=pg_url, tmp_path=tmp_path).stdout
    after = _cli("db", "status", url=pg_url, tmp_path=tmp_path)
    assert after.returncode == 0 and "applied" in after.stdout and f"schema version {postgres.LATEST} of" in after.stdout
    sqlite = _cli("db", "status", url=None, tmp_path=tmp_path)
    assert sqlite.returncode == 0 and "embedded SQLite" in sqlite.stdout
    down = _cli("db", "status", url="postgresql://nobody@127.0.0.1:1/none", tmp_path=tmp_path)
    last = down.stderr.strip().splitlines()[-1]
    assert down.returncode == 1 and last.startswith("smtpgate: database:") and "Traceback" not in down.stderr
