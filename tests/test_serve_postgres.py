"""``smtpgate serve`` on PostgreSQL (``[storage] url``): a real server process delivers end to end,
and two nodes on one database share one queue (SIGKILL of one: the other takes its recipients over
when their lease runs out). Every delivered copy has exactly one ``delivered`` event."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.support import ROOT
from tests.support.smtp_sink import start_sink
from tests.test_crash import Server, send_all, write_config

pytestmark = pytest.mark.slow

COMMITS_EVENTS_WITH_STATE = True
"""Issue 11 point 3: a recipient's state and its event commit in one transaction on PostgreSQL
(pipeline/delivery/results.py). Before that, a node killed between the two commits left delivered
copies without their event (measured: 3 and 24 of 180 in two runs)."""


def node_config(tmp_path: Path, name: str, sink_port: int, url: str, lease: float = 300.0) -> Path:
    path = tmp_path / f"{name}.toml"
    write_config(path, tmp_path / name, sink_port)
    text = path.read_text().replace("workers = 2", "workers = 1")
    text = text.replace("[spool]\n", f"[spool]\nlease = {lease}\n")
    path.write_text(text + f'\n[storage]\nurl = "{url}"\n')
    return path


async def queue_list(config: Path) -> subprocess.CompletedProcess[str]:
    """``smtpgate queue list`` run as an operator would, on a node's config."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pipeline.app.cli", "queue", "list", "-c", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]


def delivered_events(url: str, type_: str = "delivered") -> collections.Counter[str]:
    return collections.Counter(r[0] for r in rows(url, f"SELECT recipient FROM events WHERE type = '{type_}'"))


async def test_serve_on_postgres_delivers_end_to_end(tmp_path, pg_url):
    controller, sink = start_sink()
    server = Server(node_config(tmp_path, "node1", controller.port, pg_url))
    try:
        await server.start()
        accepted: set[int] = set()
        await send_all(list(range(20)), server.port, accepted)
        assert len(accepted) == 20
        assert await asyncio.to_thread(sink.wait_for, lambda: len(sink.messages) >= 20, 60)
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait(30) == 0, "\n".join(server.log[-20:])
    finally:
        controller.stop()
    assert sorted(int(m.header("X-Crash-Id")) for m in sink.messages) == list(range(20))
    assert rows(pg_url, "SELECT COUNT(*) FROM messages") == [(0,)]  # the shared queue is empty
    events = delivered_events(pg_url)
    assert len(events) == 20 and set(events.values()) == {1}
    # the queue, the events and the message log are in PostgreSQL only
    assert not (tmp_path / "node1" / "spool.db").exists() and not (tmp_path / "node1" / "events.db").exists()
    assert rows(pg_url, "SELECT COUNT(*) FROM message_log") == [(20,)]


async def test_two_nodes_share_one_queue_and_a_killed_nodes_mail_is_delivered(tmp_path, pg_url):
    controller, sink = start_sink()
    a = Server(node_config(tmp_path, "a", controller.port, pg_url, lease=3))
    b = Server(node_config(tmp_path, "b", controller.port, pg_url, lease=3))
    accepted: set[int] = set()
    try:
        await a.start()
        await b.start()
        killed = False

        def kill_a() -> None:
            nonlocal killed
            if not killed and len(accepted) >= 60:
                killed = True
                a.kill()

        await asyncio.gather(send_all(list(range(0, 100)), a.port, accepted, kill_a),
                             send_all(list(range(100, 200)), b.port, accepted))
        assert killed and await a.wait(15) == -signal.SIGKILL
        right_after = await queue_list(b.config)  # the survivor's view of the whole cluster's queue

        def ids() -> list[int]:
            return [int(m.header("X-Crash-Id")) for m in sink.messages]

        drained = await asyncio.to_thread(sink.wait_for, lambda: accepted <= set(ids()), 90)
        assert drained, f"lost {sorted(accepted - set(ids()))[:20]}\n" + "\n".join(b.log[-20:])
        # the survivor records the last results: wait for an empty queue, not for a fixed time
        async with asyncio.timeout(60):
            while await asyncio.to_thread(rows, pg_url, "SELECT COUNT(*) FROM messages") != [(0,)]:
                await asyncio.sleep(0.1)
        b.proc.send_signal(signal.SIGTERM)
        assert await b.wait(30) == 0, "\n".join(b.log[-20:])
    finally:
        controller.stop()
    delivered = collections.Counter(ids())
    dups = sum(n - 1 for n in delivered.values() if n > 1)
    summary = [line for line in right_after.stdout.splitlines() if line.startswith(("--", "By state", "Mail queue"))]
    print(f"\ntwo nodes: {len(accepted)} accepted, {len(delivered)} delivered, {dups} duplicate(s); "
          f"queue list on the survivor right after the kill: {' / '.join(summary)}")
    assert rows(pg_url, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert right_after.returncode == 0 and ("Request" in right_after.stdout or "empty" in right_after.stdout)
    at_end = await queue_list(b.config)
    assert at_end.returncode == 0 and "Mail queue is empty" in at_end.stdout
    assert set(delivered) >= accepted
    events = delivered_events(pg_url)
    # Every delivered copy has its event, including copies whose 250 the killed node never sent
    # (committed, then killed before the reply), so the reference is what the sink received, not
    # what the client saw accepted; a copy handed over again after the kill has at most one event
    # per recorded delivery.
    copies = {f"user{i}@example.net" for i in delivered}
    without_event = sorted(copies - set(events))
    print(f"two nodes: {sum(events.values())} delivered events for {len(copies)} delivered copies "
          f"({sum(delivered.values())} deliveries); {len(without_event)} without an event")
    assert set(events) <= copies
    assert sum(events.values()) <= sum(delivered.values())
    if COMMITS_EVENTS_WITH_STATE:
        assert without_event == []
    # the accepted event commits with the message: every copy that reached the sink was accepted once,
    # including the killed node's last ones (committed, 250 maybe never sent, nothing announced)
    assert set(delivered_events(pg_url, "accepted").values()) == {1}
    assert set(delivered_events(pg_url, "accepted")) >= copies


async def test_database_unreachable_means_451_never_250_and_service_resumes(tmp_path, pg_url, pg_cluster):
    """Connections refused and the open ones killed (as in a PostgreSQL restart): the ingress answers
    451 4.3.0, and once the database is back the same process accepts and delivers again."""
    import aiosmtplib

    from tests.test_crash import message

    controller, sink = start_sink()
    server = Server(node_config(tmp_path, "node1", controller.port, pg_url))
    dbname = pg_url.rsplit("/", 1)[1]
    try:
        await server.start()
        accepted: set[int] = set()
        await send_all([0, 1], server.port, accepted)
        pg_cluster.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        pg_cluster.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'")
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await aiosmtplib.send(message(2), sender="app@example.org", recipients=["user2@example.net"],
                                  hostname="127.0.0.1", port=server.port, start_tls=False, timeout=30)
        assert refused.value.code == 451 and "4.3.0" in refused.value.message
        pg_cluster.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        back = time.monotonic()
        while not {3, 4} <= accepted and time.monotonic() - back < 90:  # as a client retries a 451
            await send_all([i for i in (3, 4) if i not in accepted], server.port, accepted)
            await asyncio.sleep(0.5)
        print(f"\naccepting again {time.monotonic() - back:.1f} s after the database came back")
        assert accepted == {0, 1, 3, 4}  # no restart of smtpgate needed
        assert await asyncio.to_thread(sink.wait_for, lambda: len(sink.messages) >= 4, 60)
        server.proc.send_signal(signal.SIGTERM)
        await server.wait(30)
    finally:
        pg_cluster.admin(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        controller.stop()
    assert sorted(int(m.header("X-Crash-Id")) for m in sink.messages) == [0, 1, 3, 4]
