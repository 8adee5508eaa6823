"""With one SMTP session open, its message commits to spool.db on the event loop's own thread
(nobody else waits on the loop during the fsync, and two thread hops are saved: issue 17, durable
ingress at one session); with several sessions open, the writer thread's group commit serves them.
Either way the ``250`` comes after the COMMIT: the message is in spool.db when the client hears it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pipeline.app.harness import Dialogue, ingress_test_config, running_ingress
from pipeline.ingress.service import IngressService
from pipeline.spool.sqlite import SqliteSpool
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("inline_on_any_disk")

MESSAGE = b"From: app@shop.example\r\nTo: user@local.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"


async def send_one(d: Dialogue) -> str:
    """One transaction on an open session; the queue id of its ``250``."""
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    r = await d.cmd(MESSAGE)
    assert r.code == 250, r
    return r.text.rsplit(" ", 1)[-1]


def in_spool(data_dir: Path, queue_id: str) -> bool:
    """Read by another connection, as a crash recovery would."""
    conn = sqlite3.connect(data_dir / "spool.db")
    try:
        return conn.execute("SELECT COUNT(*) FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()[0] == 1
    finally:
        conn.close()


async def opened(port: int) -> Dialogue:
    d = await Dialogue.connect("127.0.0.1", port)
    assert (await d.reply()).code == 220
    assert (await d.cmd("EHLO client.test")).code == 250
    return d


@asynccontextmanager
async def gateway_on(data_dir: Path) -> AsyncIterator[tuple[SqliteSpool, IngressService]]:
    """The ingress on an embedded spool with no housekeeping commit of its own (forwarded
    event-outbox rows are deleted in the next enqueue's transaction, not after a second alone): the
    writer is idle between the test's messages."""
    config = ingress_test_config(data_dir, relay={"local_domains": ["local.test"]})
    async with running_ingress(config) as (gateway, ingress):
        spool = gateway.spool
        assert isinstance(spool, SqliteSpool)
        spool._forget_after = 3600.0  # noqa: SLF001
        yield spool, ingress


async def test_the_only_session_commits_on_the_loop_thread_and_is_durable_at_the_250(data_dir: Path) -> None:
    async with gateway_on(data_dir) as (spool, ingress):
        d = await opened(ingress.port("plain"))
        ids = [await send_one(d) for _ in range(3)]
        assert all(in_spool(data_dir, q) for q in ids)
        assert spool.inline_commits == 3 and spool.commits == 3
        assert (await d.cmd("QUIT")).code == 221
        await d.close()


async def test_with_two_sessions_open_the_writer_thread_commits(data_dir: Path) -> None:
    async with gateway_on(data_dir) as (spool, ingress):
        first = await opened(ingress.port("plain"))
        second = await opened(ingress.port("plain"))  # open, idle: it may speak at any moment
        ids = [await send_one(first), await send_one(second)]
        assert all(in_spool(data_dir, q) for q in ids)
        assert spool.inline_commits == 0 and spool.commits == 2
        assert (await second.cmd("QUIT")).code == 221
        await second.close()
        assert await second.closed()
        await wait_for(ingress.alone, 10, "the second session to close")  # alone again
        queue_id = await send_one(first)
        assert in_spool(data_dir, queue_id) and spool.inline_commits == 1
        await first.cmd("QUIT")
        await first.close()
