"""SQLite opened the one way every store here needs it: WAL, ``synchronous=FULL``, a busy timeout;
and written from the event loop through one group-committing thread per database (:class:`SqliteWriter`).

The spool and the event store both go through this, so a PostgreSQL backend later replaces one
function per store, not every caller.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

R = TypeVar("R")

BUSY_TIMEOUT_MS = 30000
"""How long a write waits for another connection's write lock (another process: a queue tool, an
operator's shell) before failing with "database is locked"."""


def open_sqlite(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (creating the folder) a SQLite database for concurrent use by several processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    # Debian's SQLite is built with SECURE_DELETE on: deleting a delivered message's row overwrote
    # its freed overflow pages (the whole body) with zeros, writing them to the WAL and again at the
    # checkpoint. FAST still zeroes what is deleted inside b-tree pages (rows, small values) but
    # leaves freed whole pages as they are until the next message reuses them, as Postfix leaves an
    # unlinked queue file's blocks: 0.1 ms of the spool writer's CPU per 55 KB message (issue 17).
    conn.execute("PRAGMA secure_delete=FAST")
    return conn


class SqliteWriter:
    """The one thread that writes a SQLite database for the event loop, group-committing.

    Why (issue 17 item 4): each write used to be its own hop to a thread pool
    (``asyncio.to_thread``: ``ThreadPoolExecutor.submit``, a concurrent future wrapped in an
    asyncio one, a wake-up per call), the top own-time function of the main process. Here every
    write of one database (enqueues, delivery results, event rows) is appended to one queue; the
    writer drains whatever is there, runs each operation in a savepoint of one ``BEGIN IMMEDIATE``
    transaction, commits once (one fsync with ``synchronous=FULL``) and resolves the callers'
    futures with one call per batch. A caller returns only after the COMMIT that holds its write;
    an operation that raises is rolled back alone and its caller gets the exception; a failed
    COMMIT fails every caller of the batch (none of it was committed).

    :meth:`defer` queues housekeeping nobody waits for (forgetting forwarded outbox rows): it rides
    in the next transaction a caller causes instead of costing a commit (an fsync) of its own, and
    wakes nobody (the caller decides when an empty :meth:`run` should carry it alone).

    ``run(..., linger=s)`` is for a write whose caller may wait a little (delivery results, issue
    17): it waits up to ``s`` seconds for another write to share its commit (an enqueue), and is
    committed alone only when none comes, or once :data:`MAX_LINGERING` writes linger. At one
    session every delivered message otherwise cost a commit (an fsync) and a loop wake-up of its own.
    When a linger runs out with no other write, writes do not linger for :data:`LINGER_BACKOFF`
    seconds (no traffic to share with: results trickle in, or a caller awaits each write in turn).

    ``run(..., inline=True)`` is for a caller that knows nobody else waits on its event loop (the
    SMTP ingress with one session open, issue 17): when the writer is idle (nothing queued, no
    batch running, the connection free) the transaction, with any lingering writes, runs and
    commits on the calling thread, and the futures are resolved before ``run`` returns. The loop
    is blocked for the fsync, which costs nobody anything then, and the two thread hops (the
    writer's wake-up, the loop's, a GIL handover each) are saved: at one session the message body
    step of ``bench_latency.py`` went from 2.0 to 1.25 ms. With more sessions the writer thread's
    group commit wins (inline at 10 and 50 sessions measured 10-15 % fewer msg/s), so the caller
    decides; when the writer is busy, or while commits are slow (:data:`INLINE_MAX_SECONDS`), the
    write is queued as usual.
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock, name: str) -> None:
        self._conn = conn
        self._lock = lock  # the connection's lock: synchronous callers (queue tools) share it
        self._queue: collections.deque[_Op] = collections.deque()
        self._lingering: list[_Op] = []  # run(linger=...) writes waiting for company
        self._linger_until = 0.0  # monotonic deadline of the oldest lingering write (0: commit them now)
        self._linger_timer: asyncio.TimerHandle | None = None  # the event loop's, for that deadline
        self._linger_loop: asyncio.AbstractEventLoop | None = None  # the loop that timer runs in
        self._no_linger_until = 0.0  # monotonic: a linger ran out alone lately, writes do not linger till then
        self._deferred: list[Callable[[sqlite3.Cursor], Any]] = []
        self._busy = False  # a batch is being written (by the writer thread, or inline by a caller)
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._name = name
        self.commits = 0  # transactions committed (tests and benchmarks count round trips with it)
        self.inline_commits = 0  # of those, committed on a caller's thread (``run(inline=True)``)
        self.commit_seconds = 0.0  # moving average of a transaction's time: inline only while it is short
        # seconds per committed batch holding a ``measured`` operation (/metrics: accepted messages' commits)
        self.observer: Callable[[float], None] | None = None

    async def run(
        self, fn: Callable[[sqlite3.Cursor], R], then: Then | None = None, *, measured: bool = False,
        linger: float = 0.0, inline: bool = False,
    ) -> R:
        """Run ``fn(cursor)`` inside the writer's next transaction; its result once committed.
        ``then(error)`` runs in the event loop when the outcome is known (``None``: committed),
        even if the caller was cancelled meanwhile (a committed claim must still be handed over).
        ``measured``: the batch's commit time goes to ``observer`` (the enqueues' durable commits).
        ``linger``: seconds the write may wait for another to share its commit (see the class).
        ``inline``: commit on this thread if the writer is idle (see the class); not with ``linger``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        op: _Op = (fn, fut, loop, then, measured)
        first = False
        if linger > 0 and self._no_linger_until and time.monotonic() < self._no_linger_until:
            linger = 0.0  # nobody came lately: waiting would only delay the write
        batch: list[_Op] = []
        with self._ready:
            self._check_open()
            if (inline and linger <= 0 and not self._queue and not self._busy
                    and self.commit_seconds <= INLINE_MAX_SECONDS and self._lock.acquire(blocking=False)):
                self._busy = True  # the writer thread waits for this batch to be done
                batch = self._lingering  # they waited for company: this write is it
                batch.append(op)
                self._lingering = []
                deferred, self._deferred = self._deferred, []
            elif linger <= 0:
                self._queue.append(op)
                self._ready.notify()
            else:
                lingering = self._lingering
                lingering.append(op)
                if len(lingering) == 1:
                    self._linger_until = time.monotonic() + linger
                    first = True
                elif len(lingering) >= MAX_LINGERING:
                    self._linger_until = 0.0
                    self._ready.notify()
        if batch and self._write(batch, deferred, loop):  # inline: written, this loop's futures resolved
            return cast("R", fut.result())  # the op's result, or its error raised
        timer = self._linger_timer
        if first and (timer is None or self._linger_loop is not loop or timer.when() > loop.time() + linger):
            # the deadline is kept by the event loop, not the writer thread: waking that thread to
            # learn it cost a thread switch (and a wait for the GIL) per result
            if timer is not None:
                timer.cancel()
            self._linger_timer, self._linger_loop = loop.call_later(linger, self._linger_over), loop
        return cast("R", await fut)

    def _write(self, batch: list[_Op], deferred: list[Callable[[sqlite3.Cursor], Any]],
               here: asyncio.AbstractEventLoop | None) -> bool:
        """Write ``batch`` (the writer marked busy, the connection's lock held: released here), free
        the writer, then tell the callers. ``here``: the loop of an inline write, running this (its
        futures are resolved at once); ``None`` on the writer thread. ``False``: an inline write
        found another process writing the database and handed the batch to the writer thread
        instead (its futures resolve later)."""
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] | None = None
        try:
            try:
                commits = self.commits
                done = self._transact(batch, deferred, wait=here is None)
                if here is not None:
                    self.inline_commits += self.commits - commits  # 0 when the transaction failed
            finally:
                self._lock.release()
        finally:
            with self._ready:  # free before the callers resume: their next write may go inline
                self._busy = False
                if done is None:  # not begun (or interrupted): the writer thread waits for the lock
                    self._queue.extendleft(reversed(batch))
                    self._deferred[:0] = deferred
                if here is not None and self._has_work():
                    self._ready.notify()  # what came meanwhile (another thread's write) is the writer's
        if done is None:
            return False
        self._deliver(batch, done, here)
        return True

    def _linger_over(self) -> None:
        """The event loop's timer: commit what lingers once its deadline has come (a write may have
        carried the lingering ones meanwhile, and newer ones started lingering: wait for theirs)."""
        self._linger_timer = None
        with self._ready:
            if not self._lingering or not self._linger_until:  # none, or committed at once already
                return
            now = time.monotonic()
            left = self._linger_until - now
            if left <= 0.001:  # the loop may run a timer up to its clock resolution early
                self._linger_until = 0.0
                self._ready.notify()
                # no write came for them: the next ones are not held back either for a while (a
                # trickle of results, or a caller that waits for its result before the next write)
                self._no_linger_until = now + LINGER_BACKOFF
                return
        self._linger_timer = asyncio.get_running_loop().call_later(left, self._linger_over)

    def hurry(self) -> None:
        """Commit the lingering writes now (from any thread)."""
        with self._ready:
            if self._lingering:
                self._linger_until = 0.0
                self._ready.notify()

    def defer(self, fn: Callable[[sqlite3.Cursor], Any]) -> None:
        """Run ``fn(cursor)`` at the start of the next transaction, whoever causes it (any thread),
        without waking the writer for it. Nobody waits for it: an error is rolled back and dropped,
        a failed batch keeps it for the next one; :meth:`close` still runs it."""
        with self._ready:
            self._check_open()
            self._deferred.append(fn)

    def _has_work(self) -> bool:
        """Whether the writer thread has something to do (called holding ``_ready``): queued
        writes, lingering ones whose wait is over, or closing."""
        return bool(self._queue) or self._closed or bool(self._lingering and not self._linger_until)

    def _check_open(self) -> None:
        """Raise once closed; start the thread on first use (called holding ``_ready``)."""
        if self._closed:
            # what sqlite3 raises for a closed connection: callers handle one kind of error
            raise sqlite3.ProgrammingError(f"{self._name}: Cannot operate on a closed database.")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while self._busy or not self._has_work():
                    self._ready.wait()
                if not self._queue and not self._lingering and not self._deferred:
                    return  # closed, and everything done
                batch = self._lingering  # submitted before what is queued now: they go first
                batch.extend(self._queue)
                self._lingering = []
                self._queue.clear()
                deferred, self._deferred = self._deferred, []
                self._busy = True
            self._lock.acquire()
            self._write(batch, deferred, None)

    def _transact(
        self, batch: list[_Op], deferred: list[Callable[[sqlite3.Cursor], Any]], wait: bool = True
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]] | None:
        """One transaction for ``batch`` (holding the connection's lock): each op's outcome.
        ``wait=False`` (an inline write, on the event loop): when another connection holds the
        write lock, begin nothing and return ``None`` at once rather than block the loop for up to
        the busy timeout (a queue tool or an operator's shell in another process)."""
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        started = time.perf_counter()
        try:  # the connection itself may be gone (closed under us): every caller hears it
            cur = self._conn.cursor()
            if wait:
                cur.execute("BEGIN IMMEDIATE")
            else:
                cur.execute("PRAGMA busy_timeout=0")
                try:
                    cur.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as busy:
                    if busy.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                        raise
                    return None
                finally:
                    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            for work in deferred:
                cur.execute("SAVEPOINT op")
                try:
                    work(cur)
                except Exception:  # housekeeping: undone alone, the batch goes on
                    cur.execute("ROLLBACK TO op")
                cur.execute("RELEASE op")
            if len(batch) == 1 and not deferred:  # alone (one session): no savepoint needed
                fn, fut = batch[0][0], batch[0][1]
                try:
                    done.append((fut, fn(cur), None))
                except Exception as op_error:
                    cur.execute("ROLLBACK")
                    done.append((fut, None, op_error))
            else:
                for fn, fut, _, _, _ in batch:
                    cur.execute("SAVEPOINT op")
                    try:
                        result = fn(cur)
                    except Exception as op_error:
                        cur.execute("ROLLBACK TO op")
                        cur.execute("RELEASE op")
                        done.append((fut, None, op_error))
                    else:
                        cur.execute("RELEASE op")
                        done.append((fut, result, None))
            if self._conn.in_transaction:
                cur.execute("COMMIT")
                self.commits += 1
        except Exception as batch_error:  # BEGIN or COMMIT failed: nothing of the batch is stored
            try:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            except sqlite3.Error:  # a closed connection has nothing to roll back
                pass
            done = [(fut, None, batch_error) for _, fut, _, _, _ in batch]
            if deferred and not isinstance(batch_error, sqlite3.ProgrammingError):
                with self._ready:  # not stored: with the next batch (once closed or gone: never)
                    if not self._closed:
                        self._deferred[:0] = deferred
        took = time.perf_counter() - started
        self.commit_seconds += (took - self.commit_seconds) * 0.2  # recent commits weigh most
        if self.observer is not None and any(op[4] for op in batch):
            self.observer(took)
        return done

    @staticmethod
    def _deliver(batch: list[_Op], done: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
                 here: asyncio.AbstractEventLoop | None) -> None:
        """Hand each outcome to its caller's loop: resolved at once for ``here`` (the loop of an
        inline commit, running this), through the loop's :class:`Inbox` for any other."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
        for (_, _, loop, then, _), (fut, result, error) in zip(batch, done, strict=True):
            by_loop.setdefault(loop, []).append((fut, result, error, then))
        for loop, items in by_loop.items():
            if loop is here:
                _resolve(items)
            else:
                inbox_of(loop).post(items)

    def close(self) -> None:
        """Finish what is queued, then stop the thread (before the connection is closed)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


INLINE_MAX_SECONDS = 0.002
"""An inline write blocks its event loop for the whole transaction, fsync included: other listeners'
greetings, tracking redirects, the API wait meanwhile. While recent transactions (a moving average)
take longer than this (a slow or busy disk) writes go to the writer thread, which keeps the loop
free; the writer's commits keep the average current, so inline writes resume once the disk is fast.
A durable commit takes 0.12-0.25 ms on the development machine's disk (99th percentile 0.45 ms,
the slowest of 2,000 2-4 ms: one such commit still blocks the loop before the average shows it)."""

LINGER_BACKOFF = 1.0
"""Seconds writes do not linger after a linger ran out with no other write to share its commit: a
wrong guess costs one delayed write per this time, not one per write."""

MAX_LINGERING = 16
"""Lingering writes (``run(linger=...)``) committed at once without waiting any longer: a commit
shared by this many is cheap enough, and their callers (delivery slots) wait no more."""

Then = Callable[[BaseException | None], None]
_Op = tuple[Callable[[sqlite3.Cursor], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop, Then | None, bool]
_Done = tuple["asyncio.Future[Any]", Any, BaseException | None, Then | None]


class Inbox:
    """Finished writes on their way back to one event loop, from every writer thread of the process
    (spool.db's, events.db's): a writer wakes the loop only when no wake-up is pending already.

    Why (issue 17, main process per message): ``call_soon_threadsafe`` writes a byte to the loop's
    self-pipe on every call, and each wake-up costs both threads a switch (the write, the loop's
    reads, the GIL handed over); two writers finishing while the loop is busy now cost one."""

    __slots__ = ("_items", "_lock", "_loop", "wakeups", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the registry is keyed weakly by the loop: no strong cycle
        self._lock = threading.Lock()
        self._items: list[_Done] = []  # posted, not yet resolved: non-empty means a wake-up is pending
        self.wakeups = 0  # wake-ups of the loop (tests and benchmarks count them)

    def post(self, items: list[_Done]) -> None:
        """Hand ``items`` to the loop (from a writer thread); wake it unless a wake-up is pending."""
        with self._lock:
            pending = bool(self._items)
            self._items.extend(items)
        if pending:
            return  # the pending drain takes these too
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("event loop gone")
            loop.call_soon_threadsafe(self._drain)
            self.wakeups += 1
        except RuntimeError:  # that loop is closed: nobody waits for these any more
            with self._lock:
                self._items.clear()

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        _resolve(items)


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inbox] = weakref.WeakKeyDictionary()
_INBOXES_LOCK = threading.Lock()


def inbox_of(loop: asyncio.AbstractEventLoop) -> Inbox:
    """The one :class:`Inbox` of ``loop`` (made on first use, from any thread)."""
    inbox = _INBOXES.get(loop)
    if inbox is None:
        with _INBOXES_LOCK:
            inbox = _INBOXES.get(loop)
            if inbox is None:
                inbox = _INBOXES[loop] = Inbox(loop)
    return inbox


def _resolve(items: list[_Done]) -> None:
    """Run each finished write's follow-up and resolve its caller's future, in order; a follow-up
    that raises is reported to the loop and does not keep the next writes unresolved (one drain
    carries several batches, of several writers)."""
    for fut, result, exc, then in items:
        if then is not None:
            try:
                then(exc)
            except Exception as error:
                fut.get_loop().call_exception_handler(
                    {"message": "a committed write's follow-up failed", "exception": error, "future": fut}
                )
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
