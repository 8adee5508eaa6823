"""Crash safety: ``smtpgate serve`` is killed with SIGKILL while 500 messages arrive, restarted,
and left to drain into a sink. Every message that got ``250`` must arrive; duplicates are counted;
and every delivered copy has its ``delivered`` event, one per recorded delivery (results and their
events commit together: issue 11 point 3).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import aiosmtplib
import pytest

from tests.support import ROOT
from tests.support.smtp_sink import start_sink

N = 500
CLIENTS = 40
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def write_config(path: Path, data_dir: Path, sink_port: int) -> None:
    path.write_text(
        f"""
[gateway]
data_dir = "{data_dir}"
hostname = "gw.test"
log_level = "info"

[[listeners]]
name = "crash"
address = "127.0.0.1"
port = 0
tls = "none"
require_tls = false

[limits]
max_connections = 500
max_connections_per_ip = 200
shutdown_grace = 10

[chain]
plugins = []

[[credentials]]
name = "local"
kind = "ip"
networks = ["127.0.0.0/8"]

[spool]
workers = 2
retry_min = 0.2
retry_max = 0.5
poll_interval = 0.1

[egress]
type = "smtp"
host = "127.0.0.1"
port = {sink_port}
tls = "none"

[tracking]
listen_port = 0

[api]
listen_port = 0
"""
    )


class Server:
    """``smtpgate serve`` in its own process group (so SIGKILL takes its workers down too)."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from pipeline.app.cli import main; main()", "serve", "-c", str(self.config),
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ready))
        self.port = await asyncio.wait_for(ready, 30)

    async def _read(self, ready: asyncio.Future[int]) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            m = LISTENING.search(line)
            if m and not ready.done():
                ready.set_result(int(m.group(1)))
        if not ready.done():
            ready.set_exception(RuntimeError("smtpgate serve exited:\n" + "\n".join(self.log[-30:])))

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader:
            await asyncio.wait_for(self._reader, timeout)
        return rc


def message(i: int) -> bytes:
    return (
        f"From: app@example.org\r\nTo: user{i}@example.net\r\nSubject: crash test {i}\r\n"
        f"X-Crash-Id: {i}\r\nMessage-ID: <crash-{i}@example.org>\r\n\r\n" + ("line of body text\r\n" * 40)
    ).encode()


async def send_all(ids: list[int], port: int, accepted: set[int], on_accept=None) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in ids:
        queue.put_nowait(i)

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            try:
                await aiosmtplib.send(message(i), sender="app@example.org", recipients=[f"user{i}@example.net"],
                                      hostname="127.0.0.1", port=port, start_tls=False, timeout=20)
            except (aiosmtplib.SMTPException, OSError):
                continue  # no 250: the message does not count as accepted
            accepted.add(i)
            if on_accept:
                on_accept()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


@pytest.mark.slow  # a few seconds: subprocesses / many generated cases (fast loop skips it)
async def test_sigkill_during_load_loses_no_accepted_message(tmp_path: Path):
    started = time.monotonic()
    controller, sink = start_sink()
    config = tmp_path / "smtpgate.toml"
    write_config(config, tmp_path / "data", controller.port)
    seed = int(time.time())
    rng = random.Random(seed)
    kill_after = rng.randint(50, 450)
    try:
        server = Server(config)
        await server.start()
        accepted: set[int] = set()

        def maybe_kill() -> None:
            if len(accepted) == kill_after and server.proc and server.proc.returncode is None:
                server.kill()

        await send_all(list(range(N)), server.port, accepted, maybe_kill)
        try:
            server.kill()  # idempotent if the kill already happened: the process group is gone
        except ProcessLookupError:
            pass
        assert await server.wait(15) == -signal.SIGKILL
        first_run = set(accepted)

        server = Server(config)
        await server.start()
        await send_all([i for i in range(N) if i not in first_run], server.port, accepted)

        def ids() -> list[int]:
            return [int(m.header("X-Crash-Id")) for m in sink.messages]

        drained = await asyncio.to_thread(sink.wait_for, lambda: accepted <= set(ids()), 60)
        server.proc.send_signal(signal.SIGTERM)
        rc = await server.wait(30)
    finally:
        controller.stop()
    delivered = ids()
    lost = sorted(accepted - set(delivered))
    dups = sum(n - 1 for n in collections.Counter(delivered).values() if n > 1)
    print(f"\ncrash test (seed {seed}): killed after {kill_after} accepted; {len(first_run)} accepted before the "
          f"kill, {len(accepted)} in all; {len(delivered)} delivered, {dups} duplicate(s), {len(lost)} lost; "
          f"{time.monotonic() - started:.1f} s")
    assert drained, f"not drained; lost {lost[:20]}\n" + "\n".join(server.log[-20:])
    assert lost == []
    assert len(accepted) == N
    assert rc == 0, "\n".join(server.log[-20:])
    assert dups <= len(first_run)  # duplicates only for messages in flight at the kill
    events = collections.Counter(r[0] for r in sqlite3.connect(tmp_path / "data" / "events.db").execute(
        "SELECT recipient FROM events WHERE type = 'delivered'"))
    print(f"delivered events: {sum(events.values())} for {len(set(delivered))} delivered copies "
          f"({len(delivered)} deliveries)")
    # Every delivered copy has its event (none lost in the crash window), and no delivery has two: a
    # copy handed over again after the kill has one event per recorded delivery, at most.
    assert set(events) == {f"user{i}@example.net" for i in accepted}
    assert len(set(delivered)) <= sum(events.values()) <= len(delivered)


@pytest.mark.slow  # a few seconds: two server processes
async def test_sigkill_right_after_the_250_keeps_the_message_and_its_accepted_event(tmp_path: Path):
    """SQLite: the ``accepted`` event and its message-log row commit with the message (spool.db's
    event outbox), so a kill -9 right after the ``250`` loses neither. events.db is held by another
    writer meanwhile, so nothing of this message can reach it before the kill: the event can only
    survive in spool.db, and the restarted server forwards it."""
    controller, sink = start_sink()
    config = tmp_path / "smtpgate.toml"
    write_config(config, tmp_path / "data", controller.port)
    events_db = tmp_path / "data" / "events.db"
    server = Server(config)
    try:
        await server.start()
        hold = sqlite3.connect(events_db, isolation_level=None, timeout=30)
        hold.execute("BEGIN IMMEDIATE")  # events.db's write lock: the gateway's writes to it wait
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, start_tls=False, timeout=20)
            await client.connect()
            errors, reply = await client.sendmail("app@example.org", ["user7@example.net"], message(7))
            assert errors == {} and "queued as" in reply, reply
            server.kill()  # right after the 250
            assert await server.wait(15) == -signal.SIGKILL
            client.close()
        finally:
            hold.execute("ROLLBACK")
            hold.close()

        server = Server(config)
        await server.start()
        assert await asyncio.to_thread(sink.wait_for, lambda: len(sink.messages) >= 1, 30)

        def stored(type_: str) -> list[tuple[str, str]]:
            with sqlite3.connect(events_db) as conn:
                return conn.execute("SELECT queue_id, recipient FROM events WHERE type = ?", (type_,)).fetchall()

        async with asyncio.timeout(30):  # the delivered event is forwarded after the accepted one
            while not stored("delivered"):
                await asyncio.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait(30) == 0, "\n".join(server.log[-20:])
    finally:
        if server.proc is not None and server.proc.returncode is None:  # a failed assertion: no server left behind
            server.kill()
        controller.stop()
    accepted = stored("accepted")
    assert [r for _, r in accepted] == ["user7@example.net"]
    with sqlite3.connect(events_db) as conn:  # the message log's row rode with it
        [(qid, state)] = conn.execute("SELECT m.queue_id, r.state FROM messages m JOIN message_recipients r "
                                      "ON r.queue_id = m.queue_id").fetchall()
        order = [t for (t,) in conn.execute("SELECT type FROM events WHERE queue_id = ? ORDER BY id", (qid,))]
    assert qid == accepted[0][0] and state == "delivered"
    assert order == ["accepted", "delivered"]
    assert [int(m.header("X-Crash-Id")) for m in sink.messages] == [7]
