"""The private PostgreSQL cluster fixture itself: real server, one database per test."""

from __future__ import annotations

import psycopg


def test_each_test_gets_its_own_database(pg_url: str, pg_cluster) -> None:
    other = pg_cluster.new_database()
    try:
        with psycopg.connect(pg_url) as a, psycopg.connect(other) as b:
            a.execute("CREATE TABLE only_here (x int)")
            a.commit()
            assert b.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
            assert a.execute("SHOW synchronous_commit").fetchone() == ("on",)
            assert a.execute("SHOW fsync").fetchone() == ("on",)
    finally:
        pg_cluster.drop_database(other)


def test_the_server_is_a_process_we_started(pg_cluster) -> None:
    import os

    os.kill(pg_cluster.pid, 0)  # the postmaster we stop by PID at the end of the session
    assert pg_cluster.data.is_dir() and str(pg_cluster.root).startswith(("/tmp", os.environ.get("TMPDIR", "/tmp")))
