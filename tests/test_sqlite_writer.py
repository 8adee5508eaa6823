"""The one writer thread per SQLite database (issue 17 item 4): concurrent writes share commits, a
failing write is rolled back alone, and a committed write's follow-up runs even if its caller left;
with one SMTP session, an enqueue commits on the loop's own thread when the writer is idle."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pipeline.storage import sqlite as storage_sqlite
from pipeline.storage.sqlite import MAX_LINGERING, SqliteWriter, open_sqlite

pytestmark = pytest.mark.usefixtures("inline_on_any_disk")  # the slow-disk test sets its own limit


def writer_on(tmp_path: Path) -> tuple[sqlite3.Connection, SqliteWriter, list[float]]:
    conn = open_sqlite(tmp_path / "w.db")
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    commits: list[float] = []
    writer = SqliteWriter(conn, threading.Lock(), "test-writer")
    writer.observer = commits.append
    return conn, writer, commits


def insert(v: int):  # type: ignore[no-untyped-def]
    return lambda cur: cur.execute("INSERT INTO t VALUES (?)", (v,)).rowcount


async def test_concurrent_writes_share_commits_and_each_caller_gets_its_result(tmp_path: Path) -> None:
    conn, writer, commits = writer_on(tmp_path)
    try:
        results = await asyncio.gather(*(writer.run(insert(v), measured=True) for v in range(100)))
        measured_commits = len(commits)
        await writer.run(insert(100))  # not measured (not an enqueue): its commit is not observed
    finally:
        writer.close()
    assert results == [1] * 100
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 101
    assert 1 <= len(commits) < 100
    assert len(commits) == measured_commits


async def test_a_failing_write_is_rolled_back_alone(tmp_path: Path) -> None:
    conn, writer, _ = writer_on(tmp_path)

    def half_then_fail(cur: sqlite3.Cursor) -> None:
        cur.execute("INSERT INTO t VALUES (2)")
        raise ValueError("bad row")

    try:
        results = await asyncio.gather(writer.run(insert(1)), writer.run(half_then_fail), writer.run(insert(3)),
                                       return_exceptions=True)
    finally:
        writer.close()
    assert results[0] == 1 and isinstance(results[1], ValueError) and results[2] == 1
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 3]


@pytest.mark.parametrize("inline", [False, True], ids=["writer thread", "inline"])
async def test_a_failing_write_alone_in_its_transaction_leaves_nothing_and_the_next_one_commits(
    tmp_path: Path, inline: bool
) -> None:
    """On the writer thread or inline (raised to the caller either way, and nothing stored)."""
    conn, writer, _ = writer_on(tmp_path)

    def half_then_fail(cur: sqlite3.Cursor) -> None:
        cur.execute("INSERT INTO t VALUES (2)")
        raise ValueError("bad row")

    try:
        with pytest.raises(ValueError, match="bad row"):
            await writer.run(half_then_fail, inline=inline)  # one caller, one transaction (no savepoint)
        commits = writer.commits
        assert await writer.run(insert(3), inline=inline) == 1
    finally:
        writer.close()
    assert commits == 0 and writer.commits == 1
    assert writer.inline_commits == (1 if inline else 0)
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [3]


async def test_a_failed_commit_fails_every_caller_of_the_batch(tmp_path: Path) -> None:
    conn, writer, _ = writer_on(tmp_path)
    conn.executescript("CREATE TABLE parent (id INTEGER PRIMARY KEY);"
                       "CREATE TABLE child (ref INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);")
    gate, running = threading.Event(), threading.Event()

    def hold(cur: sqlite3.Cursor) -> None:  # holds the writer while the next two queue
        running.set()
        gate.wait(10)

    try:
        first = asyncio.create_task(writer.run(hold))
        await asyncio.to_thread(running.wait, 10)
        good = asyncio.create_task(writer.run(insert(1)))
        orphan = asyncio.create_task(writer.run(lambda cur: cur.execute("INSERT INTO child VALUES (99)")))
        await asyncio.sleep(0)
        gate.set()
        await first
        results = await asyncio.gather(good, orphan, return_exceptions=True)
    finally:
        writer.close()
    # the orphan's foreign key is checked at COMMIT: the whole batch fails, the good row too
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0


async def test_the_follow_up_of_a_committed_write_runs_though_its_caller_was_cancelled(tmp_path: Path) -> None:
    conn, writer, _ = writer_on(tmp_path)
    outcome: list[BaseException | None] = []
    seen = asyncio.Event()

    def then(error: BaseException | None) -> None:
        outcome.append(error)
        seen.set()

    gate = threading.Event()

    def slow(cur: sqlite3.Cursor) -> None:
        gate.wait(10)
        cur.execute("INSERT INTO t VALUES (7)")

    try:
        task = asyncio.create_task(writer.run(slow, then))
        await asyncio.sleep(0)  # queued
        task.cancel()
        gate.set()
        await asyncio.wait_for(seen.wait(), 10)
    finally:
        writer.close()
    assert outcome == [None] and conn.execute("SELECT v FROM t").fetchall() == [(7,)]


async def test_deferred_work_rides_in_the_next_transaction_and_close_still_runs_it(tmp_path: Path) -> None:
    """Housekeeping nobody waits for (forgetting forwarded outbox rows) costs no commit of its own."""
    conn, writer, _ = writer_on(tmp_path)
    try:
        writer.defer(insert(1))
        await writer.run(insert(2))
        assert writer.commits == 1  # both in one transaction
        assert [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2]
        writer.defer(insert(1))  # fails (the key exists): rolled back alone, the batch goes on
        writer.defer(insert(3))
        assert await writer.run(insert(4)) == 1
        assert [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2, 3, 4]
        writer.defer(insert(5))
    finally:
        writer.close()  # finishes what is deferred too
    assert writer.commits == 3 and conn.execute("SELECT COUNT(*) FROM t WHERE v = 5").fetchone()[0] == 1


async def test_a_lingering_write_shares_the_commit_of_the_next_write(tmp_path: Path) -> None:
    """``run(linger=...)``: a delivery result waits for the next enqueue and rides in its commit."""
    conn, writer, _ = writer_on(tmp_path)
    try:
        lingering = asyncio.ensure_future(writer.run(insert(1), linger=3600))
        await asyncio.sleep(0)  # queued, and the writer told of its deadline
        await asyncio.to_thread(time.sleep, 0.05)  # the writer thread had every chance to commit it alone
        assert not lingering.done() and writer.commits == 0
        assert await writer.run(insert(2)) == 1
        assert await lingering == 1
    finally:
        writer.close()
    assert writer.commits == 1
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2]


async def test_a_lingering_write_alone_commits_once_its_linger_is_over(tmp_path: Path) -> None:
    conn, writer, _ = writer_on(tmp_path)
    try:
        started = time.monotonic()
        results = await asyncio.gather(writer.run(insert(1), linger=0.2), writer.run(insert(2), linger=0.2))
        waited = time.monotonic() - started
    finally:
        writer.close()
    assert results == [1, 1] and writer.commits == 1  # the second joined the first's linger
    assert waited >= 0.2
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2]


async def test_lingering_writes_commit_at_once_when_many_wait_or_when_hurried_or_closed(tmp_path: Path) -> None:
    conn, writer, _ = writer_on(tmp_path)
    try:
        many = await asyncio.wait_for(
            asyncio.gather(*(writer.run(insert(v), linger=3600) for v in range(MAX_LINGERING))), 30)
        assert many == [1] * MAX_LINGERING
        hurried = asyncio.ensure_future(writer.run(insert(100), linger=3600))
        await asyncio.sleep(0)
        writer.hurry()
        assert await asyncio.wait_for(hurried, 30) == 1
        closing = asyncio.ensure_future(writer.run(insert(101), linger=3600))
        await asyncio.sleep(0)
    finally:
        await asyncio.to_thread(writer.close)  # finishes what lingers
    assert await asyncio.wait_for(closing, 30) == 1
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == MAX_LINGERING + 2


async def test_a_failing_lingering_write_is_rolled_back_alone(tmp_path: Path) -> None:
    conn, writer, _ = writer_on(tmp_path)

    def fail(cur: sqlite3.Cursor) -> None:
        cur.execute("INSERT INTO t VALUES (5)")
        raise ValueError("bad row")

    try:
        failing = asyncio.ensure_future(writer.run(fail, linger=3600))
        await asyncio.sleep(0)
        assert await writer.run(insert(6)) == 1
        with pytest.raises(ValueError, match="bad row"):
            await failing
    finally:
        writer.close()
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [6]


async def test_after_a_linger_ran_out_alone_writes_do_not_linger_for_a_while(tmp_path: Path, monkeypatch) -> None:
    """A caller awaiting each write before the next (or a trickle of results) gains nothing from
    lingering: after one linger runs out alone, the next writes commit at once for LINGER_BACKOFF."""
    conn, writer, _ = writer_on(tmp_path)
    try:
        monkeypatch.setattr(storage_sqlite, "LINGER_BACKOFF", 0.0)
        await writer.run(insert(1), linger=0.05)  # nobody came: committed alone once the linger ran out
        lingering = asyncio.ensure_future(writer.run(insert(2), linger=3600))  # no back-off: lingers
        await asyncio.sleep(0)
        await asyncio.to_thread(time.sleep, 0.05)
        assert not lingering.done()
        assert await writer.run(insert(3)) == 1
        assert await lingering == 1
        assert writer.commits == 2
        monkeypatch.setattr(storage_sqlite, "LINGER_BACKOFF", 3600.0)
        await writer.run(insert(4), linger=0.05)  # runs out alone: writes stop lingering for the back-off
        assert await asyncio.wait_for(writer.run(insert(5), linger=3600), 30) == 1  # committed at once
    finally:
        writer.close()
    assert writer.commits == 4
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2, 3, 4, 5]


async def test_an_inline_write_commits_on_the_calling_thread_before_run_returns(tmp_path: Path) -> None:
    """``run(inline=True)`` with the writer idle (one SMTP session, issue 17): no thread hop; the
    row is committed, visible to another connection, when ``run`` returns, and ``then`` has run."""
    conn, writer, commits = writer_on(tmp_path)
    threads: list[int] = []
    followed: list[BaseException | None] = []

    def write(cur: sqlite3.Cursor) -> int:
        threads.append(threading.get_ident())
        return int(cur.execute("INSERT INTO t VALUES (1)").rowcount)

    try:
        assert await writer.run(write, followed.append, measured=True, inline=True) == 1
        other = sqlite3.connect(tmp_path / "w.db")
        assert other.execute("SELECT v FROM t").fetchall() == [(1,)]
        other.close()
        assert followed == [None]
        assert await writer.run(insert(2)) == 1  # not inline: the writer thread still serves
    finally:
        writer.close()
    assert threads == [threading.get_ident()]
    assert writer.commits == 2 and writer.inline_commits == 1
    assert len(commits) == 1  # the measured (enqueue) commit was observed as on the writer thread


async def test_an_inline_write_carries_the_lingering_writes_in_its_commit(tmp_path: Path) -> None:
    """A delivery result lingering for company rides in the next enqueue's commit, inline or not."""
    conn, writer, _ = writer_on(tmp_path)
    try:
        lingering = asyncio.ensure_future(writer.run(insert(1), linger=3600))
        await asyncio.sleep(0)
        assert not lingering.done()
        assert await writer.run(insert(2), inline=True) == 1
        await asyncio.sleep(0)  # its task resumes: the future it awaits was resolved by the inline commit
        assert lingering.done() and lingering.result() == 1
    finally:
        writer.close()
    assert writer.commits == 1 and writer.inline_commits == 1
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2]


async def test_an_inline_write_goes_to_the_writer_thread_when_the_connection_is_busy(tmp_path: Path) -> None:
    """A synchronous caller (the queue CLI's tools, a claim) holds the connection: the loop does
    not wait for it; the write is queued for the writer thread, which commits it once free."""
    conn = open_sqlite(tmp_path / "w.db")
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    lock = threading.Lock()
    writer = SqliteWriter(conn, lock, "test-writer")
    threads: list[int] = []

    def write(cur: sqlite3.Cursor) -> int:
        threads.append(threading.get_ident())
        return int(cur.execute("INSERT INTO t VALUES (1)").rowcount)

    try:
        with lock:
            pending = asyncio.ensure_future(writer.run(write, inline=True))
            await asyncio.sleep(0.05)
            assert not pending.done()  # run returned to the loop instead of blocking it
        assert await asyncio.wait_for(pending, 30) == 1
    finally:
        writer.close()
    assert writer.inline_commits == 0 and writer.commits == 1
    assert threads and threads[0] != threading.get_ident()


async def test_an_inline_write_does_not_wait_on_the_loop_for_another_process_s_write_lock(tmp_path: Path) -> None:
    """Another connection (a queue tool in another process, an operator's ``sqlite3`` shell) holds
    the database's write lock: the inline write begins nothing and goes to the writer thread, which
    waits for the lock, instead of blocking the event loop for up to the busy timeout. Lingering
    writes it carried go with it; the busy timeout is the connection's again afterwards."""
    conn, writer, _ = writer_on(tmp_path)
    hold = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    hold.execute("BEGIN IMMEDIATE")
    try:
        lingering = asyncio.ensure_future(writer.run(insert(1), linger=3600))
        await asyncio.sleep(0)
        started = time.monotonic()
        pending = asyncio.ensure_future(writer.run(insert(2), inline=True))
        await asyncio.sleep(0.2)  # the loop runs: the write waits elsewhere
        assert time.monotonic() - started < 5 and not pending.done() and not lingering.done()
        hold.execute("ROLLBACK")
        assert await asyncio.wait_for(pending, 30) == 1
        assert await asyncio.wait_for(lingering, 30) == 1
        assert await writer.run(insert(3), inline=True) == 1  # the lock is free: inline again
    finally:
        if hold.in_transaction:
            hold.execute("ROLLBACK")
        hold.close()
        writer.close()
    assert writer.inline_commits == 1 and writer.commits == 2
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 2, 3]
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == storage_sqlite.BUSY_TIMEOUT_MS


async def test_inline_writes_go_to_the_writer_thread_while_commits_are_slow(tmp_path: Path, monkeypatch) -> None:
    """A slow disk's fsync would block the event loop (other sessions' greetings, tracking
    redirects): while recent commits are slow the writer thread commits, keeping the loop free;
    its commits keep the average current, and inline writes resume once they are fast again."""
    conn, writer, _ = writer_on(tmp_path)
    monkeypatch.setattr(storage_sqlite, "INLINE_MAX_SECONDS", 0.010)
    slow = [0.1]

    def write(v: int):  # type: ignore[no-untyped-def]
        def fn(cur: sqlite3.Cursor) -> int:
            time.sleep(slow[0])  # the transaction's time, as a slow fsync would make it
            return int(cur.execute("INSERT INTO t VALUES (?)", (v,)).rowcount)
        return fn

    try:
        assert await writer.run(write(1), inline=True) == 1  # no history yet: inline
        assert writer.inline_commits == 1 and writer.commit_seconds > 0.010
        for v in range(2, 5):
            assert await writer.run(write(v), inline=True) == 1
        assert writer.inline_commits == 1  # slow: the writer thread took them
        slow[0] = 0.0
        for v in range(5, 40):
            await writer.run(write(v), inline=True)
            if writer.inline_commits > 1:
                break
        assert writer.inline_commits == 2  # fast again: back on the caller's thread
    finally:
        writer.close()
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == v


async def test_an_inline_write_waits_its_turn_behind_queued_writes(tmp_path: Path) -> None:
    """Writes already queued for the writer thread go first: an inline write then joins them."""
    conn, writer, _ = writer_on(tmp_path)
    try:
        results = await asyncio.gather(*(writer.run(insert(v)) for v in range(5)), writer.run(insert(5), inline=True))
    finally:
        writer.close()
    assert results == [1] * 6
    assert writer.inline_commits == 0
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == list(range(6))


def test_deleting_a_delivered_body_does_not_write_its_pages_again(tmp_path: Path) -> None:
    """secure_delete=FAST (Debian builds SQLite with it on): a deleted 55 KB body's freed overflow
    pages are not overwritten with zeros through the WAL (they stay free for the next body), while
    what is deleted inside b-tree pages (a recipient's address) is still zeroed."""
    path = tmp_path / "s.db"
    conn = open_sqlite(path)
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 2  # FAST
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute("CREATE TABLE m (q TEXT PRIMARY KEY, rcpt TEXT, data BLOB)")
    body = bytes(range(256)) * 215  # 55 KB: 14 overflow pages of 4 KB
    conn.execute("INSERT INTO m VALUES ('q1', 'jane.doe@example.org', ?)", (body,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute("DELETE FROM m WHERE q = 'q1'")
    frames = ((tmp_path / "s.db-wal").stat().st_size - 32) // (page + 24)  # WAL header, then header + page
    assert 0 < frames <= 4  # the leaf, the freelist trunk, the index (zeroing the body: 14 more)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"jane.doe@example.org" not in path.read_bytes()  # the row itself was zeroed in its page
    conn.execute("INSERT INTO m VALUES ('q2', 'x@example.org', ?)", (body[::-1],))  # freed pages reused
    assert conn.execute("PRAGMA page_count").fetchone()[0] == pages
    assert conn.execute("SELECT data FROM m").fetchone()[0] == body[::-1]
    conn.close()
