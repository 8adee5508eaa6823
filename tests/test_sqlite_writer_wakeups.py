"""Writer threads wake the event loop once per drain of finished writes, not once per batch: two
writers (spool.db's and events.db's) finishing while the loop is busy cost one self-pipe wake-up
(issue 17, main process per message), and no finished write is ever left waiting."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.storage.sqlite import SqliteWriter, open_sqlite


def writer_on(path: Path) -> tuple[sqlite3.Connection, SqliteWriter]:
    conn = open_sqlite(path)
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    return conn, SqliteWriter(conn, threading.Lock(), path.stem)


def insert(v: int) -> Callable[[sqlite3.Cursor], int]:
    return lambda cur: int(cur.execute("INSERT INTO t VALUES (?)", (v,)).rowcount)


def block_until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Hold the calling thread (the event loop's: it stays busy) until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def back_waiting(writer: SqliteWriter, commits: int) -> Callable[[], bool]:
    """The writer committed its batch, handed it to the loop and waits for the next one."""
    return lambda: writer.commits > commits and bool(writer._ready._waiters)  # type: ignore[attr-defined]  # noqa: SLF001


async def test_two_writers_finishing_while_the_loop_is_busy_wake_it_once(tmp_path: Path) -> None:
    conn_a, a = writer_on(tmp_path / "a.db")
    conn_b, b = writer_on(tmp_path / "b.db")
    loop = asyncio.get_running_loop()
    calls: list[Any] = []
    original = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(callback)
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    try:
        assert await asyncio.gather(a.run(insert(1)), b.run(insert(1))) == [1, 1]  # both threads started
        commits_a, commits_b = a.commits, b.commits
        calls.clear()
        first = asyncio.ensure_future(a.run(insert(2)))
        second = asyncio.ensure_future(b.run(insert(2)))
        await asyncio.sleep(0)  # both writes queued
        block_until(lambda: back_waiting(a, commits_a)() and back_waiting(b, commits_b)())
        assert await asyncio.gather(first, second) == [1, 1]
        assert len(calls) == 1  # one wake-up carried both writers' batches
        calls.clear()
        assert await a.run(insert(3)) == 1  # and the next batch wakes it again
        assert len(calls) == 1
    finally:
        del loop.call_soon_threadsafe
        a.close()
        b.close()
    assert [r[0] for r in conn_a.execute("SELECT v FROM t ORDER BY v")] == [1, 2, 3]
    assert [r[0] for r in conn_b.execute("SELECT v FROM t ORDER BY v")] == [1, 2]


async def test_a_failing_follow_up_leaves_no_write_of_its_batch_unresolved(tmp_path: Path) -> None:
    conn, writer = writer_on(tmp_path / "w.db")
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    gate, running = threading.Event(), threading.Event()

    def hold(cur: sqlite3.Cursor) -> None:  # holds the writer while the next two queue
        running.set()
        gate.wait(10)

    def broken(error: BaseException | None) -> None:
        raise RuntimeError("follow-up bug")

    try:
        held = asyncio.ensure_future(writer.run(hold))
        await asyncio.to_thread(running.wait, 10)
        first = asyncio.ensure_future(writer.run(insert(1), broken))
        second = asyncio.ensure_future(writer.run(insert(2)))
        await asyncio.sleep(0)  # both queued: one batch
        gate.set()
        await held
        results = await asyncio.wait_for(asyncio.gather(first, second), 10)
    finally:
        loop.set_exception_handler(None)
        writer.close()
    assert results == [1, 1]
    assert [str(c["exception"]) for c in reported] == ["follow-up bug"]
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 2
