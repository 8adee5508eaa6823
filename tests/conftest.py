"""Fixtures shared by the whole suite: a generated TLS certificate, a fresh data dir, SMTP sinks.

Helpers (paths, message builders, servers to test against) are in ``tests/support``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Property tests check results, not speed: no per-example deadline (200 ms by default) and no "data
# generation is too slow" health check, which both fail, or report a replay as Flaky, when another
# test (pytest-xdist's other worker) shares the CPU. A test that sets either itself still wins.
settings.register_profile("smtpgate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("smtpgate")


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert_file, key_file).

    Made by the same function the gateway uses when no certificate is configured.
    """
    from pipeline.ingress.tls import generate_self_signed

    d = tmp_path_factory.mktemp("tls")
    cert_file, key_file = d / "cert.pem", d / "key.pem"
    generate_self_signed(cert_file, key_file, "localhost")
    return cert_file, key_file


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory, also exported as SMTPGATE_DATA_DIR for CLI runs."""
    d = tmp_path / "data"
    monkeypatch.setenv("SMTPGATE_DATA_DIR", str(d))
    return d


@pytest.fixture
def inline_on_any_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone session's writes go inline whatever the disk's speed: on a loaded test run one slow
    commit would lift the spool writer's moving average past ``INLINE_MAX_SECONDS`` and send the
    next write to the writer thread (a test of that fallback sets its own limit)."""
    from pipeline.storage import sqlite as storage_sqlite

    monkeypatch.setattr(storage_sqlite, "INLINE_MAX_SECONDS", 60.0)


@pytest.fixture
def sinks() -> Iterator[Callable[..., Any]]:
    """Start real aiosmtpd sinks on ephemeral ports: ``sinks(**kw) -> (controller, handler)``;
    every sink started is stopped at the end of the test."""
    from tests.support.smtp_sink import start_sink

    started: list[Any] = []

    def make(**kw: Any) -> Any:
        controller, handler = start_sink(**kw)
        started.append(controller)
        return controller, handler

    yield make
    for controller in started:
        controller.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A private PostgreSQL cluster for the whole session (tests/support/pg_cluster.py), stopped by PID."""
    from tests.support.pg_cluster import PgCluster

    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> Iterator[str]:
    """A fresh database of its own for this test: its ``postgresql://`` URL (dropped afterwards)."""
    url = pg_cluster.new_database()
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each storage backend in turn (tests/support/storage_backends.py): the same test, both databases."""
    from tests.support.storage_backends import Backend

    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return Backend(request.param, tmp_path / "data", url)
