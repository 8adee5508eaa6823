"""Crash safety of lingering result commits (issue 17): a delivery result waits up to
``RESULT_LINGER`` in spool.db's writer for the next enqueue to share its commit. A ``kill -9`` in
that window must lose nothing: the copy is still ``processing`` in spool.db, so the restarted
gateway hands it out again (a duplicate at the next hop), and its ``delivered`` event is the one of
the delivery that was recorded, once."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import aiosmtplib
import pytest

from tests.support import ROOT
from tests.support.smtp_sink import start_sink
from tests.test_crash import Server, message, write_config

LINGERING = "smtpgate-test: a result lingers"

# ``smtpgate serve`` whose results linger an hour, announcing on stderr each result queued to linger
SERVE_LINGERING = f"""
import asyncio, sys
import pipeline.delivery.results as results
from pipeline.storage.sqlite import SqliteWriter
results.RESULT_LINGER = 3600.0
run = SqliteWriter.run

async def announced(self, fn, then=None, *, measured=False, linger=0.0, **more):
    pending = asyncio.ensure_future(run(self, fn, then, measured=measured, linger=linger, **more))
    await asyncio.sleep(0)  # queued in the writer by now
    if linger > 0 and self._lingering:
        print({LINGERING!r}, file=sys.stderr, flush=True)
    return await pending

SqliteWriter.run = announced
from pipeline.app.cli import main
main()
"""


class LingeringServer(Server):
    """:class:`Server` running :data:`SERVE_LINGERING`; ``lingering`` is set once a result lingers."""

    def __init__(self, config: Path) -> None:
        super().__init__(config)
        self.lingering = asyncio.Event()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVE_LINGERING,
            "serve",
            "-c",
            str(self.config),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ready))
        self.port = await asyncio.wait_for(ready, 30)

    async def _read(self, ready: asyncio.Future[int]) -> None:
        watch = asyncio.create_task(self._watch())
        try:
            await super()._read(ready)
        finally:
            watch.cancel()

    async def _watch(self) -> None:
        while LINGERING not in self.log:
            await asyncio.sleep(0.01)
        self.lingering.set()


def recipient_states(spool_db: Path) -> list[str]:
    with sqlite3.connect(f"file:{spool_db}?mode=ro", uri=True) as conn:
        return [s for (s,) in conn.execute("SELECT state FROM recipients")]


@pytest.mark.slow  # two server processes
async def test_sigkill_while_a_result_lingers_redelivers_and_loses_nothing(tmp_path: Path):
    controller, sink = start_sink()
    config = tmp_path / "smtpgate.toml"
    write_config(config, tmp_path / "data", controller.port)
    events_db, spool_db = tmp_path / "data" / "events.db", tmp_path / "data" / "spool.db"
    server: Server = LingeringServer(config)
    try:
        await server.start()
        assert isinstance(server, LingeringServer)
        # events.db's write lock: the outbox forwarder waits, so it causes no spool.db write that
        # would carry the lingering result's commit before the kill
        hold = sqlite3.connect(events_db, isolation_level=None, timeout=30)
        hold.execute("BEGIN IMMEDIATE")
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, start_tls=False, timeout=20)
            await client.connect()
            errors, reply = await client.sendmail("app@example.org", ["user7@example.net"], message(7))
            assert errors == {} and "queued as" in reply, reply
            try:  # delivered, its result not committed
                await asyncio.wait_for(server.lingering.wait(), 30)
            except TimeoutError:
                pytest.fail("no result lingered; the server logged:\n" + "\n".join(server.log[-30:]))
            assert len(sink.messages) == 1
            assert recipient_states(spool_db) == ["processing"]
            server.kill()
            assert await server.wait(15) == -signal.SIGKILL
            client.close()
        finally:
            hold.execute("ROLLBACK")
            hold.close()

        server = Server(config)  # the default linger
        await server.start()
        assert await asyncio.to_thread(sink.wait_for, lambda: len(sink.messages) >= 2, 30)

        def stored(type_: str) -> list[str]:
            with sqlite3.connect(events_db) as conn:
                return [r for (r,) in conn.execute("SELECT recipient FROM events WHERE type = ?", (type_,))]

        async with asyncio.timeout(30):
            while not stored("delivered"):
                await asyncio.sleep(0.05)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait(30) == 0, "\n".join(server.log[-20:])
    finally:
        if server.proc is not None and server.proc.returncode is None:
            server.kill()
        controller.stop()
    # handed out again (a duplicate), not lost; one accepted event, one delivered (the recorded delivery)
    assert [int(m.header("X-Crash-Id")) for m in sink.messages] == [7, 7]
    assert stored("accepted") == ["user7@example.net"]
    assert stored("delivered") == ["user7@example.net"]
    assert recipient_states(spool_db) == []  # final: the message left the queue
    with sqlite3.connect(events_db) as conn:
        assert conn.execute("SELECT state FROM message_recipients").fetchall() == [("delivered",)]
