"""The worker pool runs its processes itself (issue 17: main-process CPU, idle tree RSS).

The gateway's process tree is the main process and its N workers, nothing else (no forkserver,
no multiprocessing resource tracker), and the main process runs no executor-manager or queue
feeder thread. A worker killed in the middle of a message fails that message only, as a
temporary failure the scheduler retries; the worker is replaced and the others keep serving.
A worker that dies while starting is retried with a growing delay, never in a tight loop.
Results come back to the task that asked for them, however many are in flight.
Workers idle for ``[spool] worker_max_idle`` seconds exit (the idle tree is the main process
alone) and are started again on demand; a start that crashes defers the task, never holds it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline import Plugin, hookimpl
from pipeline.chain.driver import make_config
from pipeline.delivery.workers import WorkerDied, WorkerPool, WorkerUnavailable, build_chain
from tests.support.smtp_sink import EventRecorder
from tests.support.waiting import wait_for
from tests.test_delivery import enqueue, start_service, stop
from tests.test_process_lifetime import alive, start_gateway, stop_gateway

pytestmark = pytest.mark.slow  # worker processes

RAW = b"From: app@example.org\r\nTo: x@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture(autouse=True)
def _events():
    EventRecorder.reset()
    yield
    EventRecorder.reset()


def echo(i: int) -> tuple[int, int]:
    """Runs in a worker: the argument back, and which process answered."""
    return i, os.getpid()


def crash() -> None:
    """Runs in a worker: ends it as a segfault would."""
    os._exit(11)


class Hold(Plugin):
    """Asks the test, over ``<data_dir>/h.sock``, whether to go on; the test answers, or kills the
    worker while it waits (a message in the middle of processing)."""

    name = "hold"

    @hookimpl
    def on_transform(self, ctx: Any) -> Any:
        path = self.env.data_dir / "h.sock"
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                s.sendall(f"{os.getpid()}\n".encode())
                s.recv(1)  # blocks until the test answers
        return None


def in_worker() -> bool:
    return getattr(sys.modules["__main__"].__spec__, "name", None) == "pipeline.delivery.worker_main"


class CrashAtStart(Plugin):
    """Kills its worker while the chain is being built, as long as ``<data_dir>/crash`` exists."""

    name = "crash_at_start"

    def __init__(self, config: Any, env: Any) -> None:
        super().__init__(config, env)
        if in_worker() and (env.data_dir / "crash").exists():
            os._exit(3)


class SlowStart(Plugin):
    """Holds its worker's start-up while ``<data_dir>/slow`` exists (a start in progress for as
    long as the test needs; a minute at most)."""

    name = "slow_start"

    def __init__(self, config: Any, env: Any) -> None:
        super().__init__(config, env)
        deadline = time.monotonic() + 60
        while in_worker() and (env.data_dir / "slow").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


class Holds:
    """The test's end of :class:`Hold`: each connection is a worker asking, with its pid."""

    def __init__(self) -> None:
        self.asks: asyncio.Queue[tuple[int, asyncio.StreamWriter]] = asyncio.Queue()

    async def serve(self, path: Path) -> asyncio.AbstractServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            pid = int((await reader.readline()).decode())
            await self.asks.put((pid, writer))

        return await asyncio.start_unix_server(handle, str(path))


class LogWatch(logging.Handler):
    """The pool's log lines, with an event per line to wait on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.changed.set()

    async def until(self, predicate: Callable[[list[str]], bool], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.lines):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def pool_log():
    logger = logging.getLogger("smtpgate.workers")
    watch, level = LogWatch(), logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.DEBUG)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(level)


def new_pool(
    data_dir: Path, workers: int, plugins: list[Any] | None = None, max_idle: float | None = None
) -> WorkerPool:
    data_dir.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"gateway": {"data_dir": str(data_dir)}, "egress": {"type": "null"}}
    if max_idle is not None:
        overrides["spool"] = {"worker_max_idle": max_idle}
    config = make_config(overrides)
    return WorkerPool(config, workers, build_chain(config, plugins or []), plugins or [])


def _all_children() -> set[int]:
    return {int(pid) for f in Path("/proc/self/task").glob("*/children") for pid in f.read_text().split()}


_before: set[int] = set()


@pytest.fixture(autouse=True)
def _children_of_other_tests() -> None:
    """Children this process had before the test (another test's servers, in a shared pytest
    process) are not this test's: :func:`children` leaves them out."""
    _before.clear()
    _before.update(_all_children())


def children() -> set[int]:
    """The child processes this test started, zombies included (a worker not reaped is a leak)."""
    return _all_children() - _before

async def serves_again_once_the_crash_is_gone(pool: WorkerPool, pool_log: Any, data_dir: Path) -> None:
    """Remove the file that makes a worker crash at start-up; the next start is ready and serves."""
    (data_dir / "crash").unlink()
    fixed = len(pool_log.lines)
    await pool_log.until(lambda lines: any(line.endswith(" ready") for line in lines[fixed:]))
    assert (await pool.call(functools.partial(echo, 2)))[0] == 2



def stopped_idle(lines: list[str]) -> list[str]:
    return [line for line in lines if line.endswith("; stopped") and " idle for " in line]


def on_demand(lines: list[str]) -> list[str]:
    return [line for line in lines if "on demand" in line]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_process_tree_of_serve_is_the_main_process_and_its_workers_only(tmp_path: Path) -> None:
    proc, children, log = start_gateway(tmp_path)  # asserts exactly 2 children
    try:
        for pid in children:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"pipeline.delivery.worker_main" in cmdline, cmdline
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            assert ppid == proc.pid
        assert log.read_text().count("worker ready: ") == 2
    finally:
        stop_gateway(proc, children)


async def test_the_main_process_runs_no_executor_manager_nor_queue_feeder_thread(data_dir):
    before = set(threading.enumerate())
    pool = new_pool(data_dir, 2)
    await pool.start()
    try:
        assert len({pid for _, pid in await asyncio.gather(*(pool.call(functools.partial(echo, i))
                                                              for i in range(8)))}) == 2
        new = set(threading.enumerate()) - before
    finally:
        await pool.close()
    kinds = {type(t).__name__ for t in new} | {t.name for t in new}
    assert not {"_ExecutorManagerThread", "QueueFeederThread"} & kinds, kinds
    assert {t.name for t in new} <= {"smtpgate-trim"}, kinds  # the idle heap trimmer, nothing per task


async def test_results_come_back_to_the_task_that_asked_under_concurrency(data_dir):
    pool = new_pool(data_dir, 2)
    await pool.start()
    try:
        answers = await asyncio.gather(*(pool.call(functools.partial(echo, i)) for i in range(300)))
        rcpts = [f"r{i}@example.net" for i in range(60)]
        copies = await asyncio.gather(*(
            pool.process({"queue_id": f"q{i}"}, RAW, "app@example.org", [r]) for i, r in enumerate(rcpts)))
    finally:
        await pool.close()
    assert [i for i, _ in answers] == list(range(300))
    assert len({pid for _, pid in answers}) == 2  # both workers served
    assert [[c.recipient for c in cs] for cs in copies] == [[r] for r in rcpts]


async def test_a_dead_worker_fails_only_its_own_tasks_and_is_replaced(data_dir, pool_log):
    pool = new_pool(data_dir, 2)
    await pool.start()
    try:
        before = set(pool.pids())
        with pytest.raises(WorkerDied):
            await pool.call(crash)
        # the other worker answers throughout, and a new one replaces the dead one
        answers = await asyncio.gather(*(pool.call(functools.partial(echo, i)) for i in range(20)))
        assert [i for i, _ in answers] == list(range(20))
        await pool_log.until(lambda lines: any("exit status 11" in line for line in lines))
        died = next(n for n, line in enumerate(pool_log.lines) if "exit status 11" in line)
        await pool_log.until(lambda lines: any(line.endswith(" ready") for line in lines[died:]))
        after = set(pool.pids())
        assert len(after) == 2 and len(before & after) == 1
        assert len({pid for _, pid in await asyncio.gather(*(pool.call(functools.partial(echo, i))
                                                              for i in range(8)))}) == 2
    finally:
        await pool.close()
    assert not alive(after)


async def test_a_worker_that_dies_at_start_up_is_retried_with_a_growing_delay(data_dir, pool_log):
    pool = new_pool(data_dir, 1, [CrashAtStart])
    await pool.start()
    try:
        (data_dir / "crash").write_text("x")
        with pytest.raises(WorkerDied):
            await pool.call(crash)
        await pool_log.until(lambda lines: any("failed 3 times in a row at start-up; next try in 1.0 s" in line
                                               for line in lines))
        assert any("failed 2 times in a row at start-up; next try in 0.5 s" in line for line in pool_log.lines)
        with pytest.raises(WorkerUnavailable):  # the only worker waits out its delay: fail now, retry later
            await pool.call(functools.partial(echo, 1))
        await serves_again_once_the_crash_is_gone(pool, pool_log, data_dir)
    finally:
        await pool.close()


async def test_a_worker_killed_mid_message_defers_it_the_retry_delivers_it_and_the_pool_keeps_serving(data_dir):
    holds = Holds()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = await holds.serve(data_dir / "h.sock")
    gw, svc = await start_service(data_dir, egress={"type": "null"}, plugins=(Hold,), workers=2)
    try:
        first = await enqueue(gw, ["held@example.net"])
        pid, _ = await asyncio.wait_for(holds.asks.get(), 30)
        second = await enqueue(gw, ["other@example.net"])  # goes to the other worker
        other_pid, writer = await asyncio.wait_for(holds.asks.get(), 30)
        assert other_pid != pid
        os.kill(pid, signal.SIGKILL)
        await EventRecorder.until(lambda: bool(EventRecorder.of("deferred")), timeout=30)
        writer.write(b"g")
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered", "other@example.net")), timeout=30)
        retry_pid, writer = await asyncio.wait_for(holds.asks.get(), 30)  # the retry, on a live worker
        assert retry_pid != pid
        writer.write(b"g")
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered", "held@example.net")), timeout=30)
    finally:
        server.close()
        await stop(gw, svc)
    [deferred] = EventRecorder.of("deferred")
    assert deferred.queue_id == first and "451 4.3.0 processing failed: WorkerDied" in deferred.data["reply"]
    assert [e.queue_id for e in EventRecorder.of("delivered")] == [second, first]
    assert not alive({pid})


def test_worker_max_idle_is_validated_and_defaults_to_a_minute() -> None:
    assert make_config({}).spool.worker_max_idle == 60.0
    assert make_config({"spool": {"worker_max_idle": 0}}).spool.worker_max_idle == 0.0
    with pytest.raises(Exception, match="worker_max_idle"):
        make_config({"spool": {"worker_max_idle": -1}})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_workers_idle_for_worker_max_idle_exit_and_the_tree_is_the_main_process_alone(data_dir, pool_log):
    # Each worker's idle time counts from its own "ready": with 0.3 s, on a loaded machine (another
    # test on the other core) the first worker was stopped before the second was even ready, and
    # start() returned a pool of one. 3 s is several times the spread of two start-ups under load.
    max_idle = 3.0
    pool = new_pool(data_dir, 2, max_idle=max_idle)
    await pool.start()
    try:
        started = set(pool.pids())
        assert len(started) == 2 and children() == started
        [copy] = await pool.process({"queue_id": "q1"}, RAW, "app@example.org", ["x@example.net"])
        assert copy.recipient == "x@example.net"
        await wait_for(lambda: not children())  # exited and reaped: no zombie either
        assert pool.pids() == []
        await pool_log.until(lambda lines: len(stopped_idle(lines)) == 2)
        assert sorted(stopped_idle(pool_log.lines)) == sorted(
            f"worker process {pid} idle for {max_idle:g} s; stopped" for pid in started)
        # a stop for being idle is not a death: no error, no replacement, no back-off
        assert not [line for line in pool_log.lines
                    if "ended (" in line or "starting another" in line or "next try" in line or "on demand" in line]
    finally:
        await pool.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_a_message_after_the_workers_exited_idle_is_processed_by_a_freshly_started_worker(
        data_dir, pool_log):
    pool = new_pool(data_dir, 2, max_idle=0.3)
    await pool.start()
    try:
        first = set(pool.pids())
        await wait_for(lambda: not children())
        copies = await pool.process({"queue_id": "q2"}, RAW, "app@example.org", ["y@example.net"])
        assert [c.recipient for c in copies] == ["y@example.net"]
        [fresh] = pool.pids()  # one task: one worker started
        assert fresh not in first and children() == {fresh}
        assert len(on_demand(pool_log.lines)) == 1
        # more tasks than one worker takes: the pool starts as many as they need, up to `workers`
        await wait_for(lambda: not children())
        answers = await asyncio.gather(*(pool.call(functools.partial(echo, i)) for i in range(8)))
        assert [i for i, _ in answers] == list(range(8))
        assert len(on_demand(pool_log.lines)) == 3
        assert not [line for line in pool_log.lines if "ended (" in line or "next try" in line]
    finally:
        await pool.close()
    assert not children()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_with_worker_max_idle_0_workers_never_exit_when_idle(tmp_path, pool_log):
    never, soon = new_pool(tmp_path / "never", 1, max_idle=0), new_pool(tmp_path / "soon", 1, max_idle=0.3)
    await never.start()
    await soon.start()
    try:
        kept, gone = set(never.pids()), set(soon.pids())
        for pool in (never, soon):
            await pool.process({"queue_id": "q3"}, RAW, "app@example.org", ["z@example.net"])
        await wait_for(lambda: not alive(gone))  # longer than the other pool's idle limit, by its own clock
        await pool_log.until(lambda lines: len(stopped_idle(lines)) == 1)
        assert never.pids() == list(kept) and alive(kept) == kept
        assert never._idle_timer is None  # nothing armed: an idle gateway is not woken for this
    finally:
        await never.close()
        await soon.close()


async def test_an_on_demand_start_that_crashes_at_start_up_defers_the_task_instead_of_hanging(data_dir, pool_log):
    pool = new_pool(data_dir, 1, [CrashAtStart], max_idle=0.3)
    await pool.start()
    try:
        await pool_log.until(lambda lines: len(stopped_idle(lines)) == 1)
        (data_dir / "crash").write_text("x")
        with pytest.raises(WorkerUnavailable):  # the scheduler defers the message and retries it later
            async with asyncio.timeout(30):
                await pool.call(functools.partial(echo, 1))
        assert any("failed 2 times in a row at start-up; next try in 0.5 s" in line for line in pool_log.lines)
        await serves_again_once_the_crash_is_gone(pool, pool_log, data_dir)
    finally:
        await pool.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_closing_the_pool_while_an_on_demand_start_is_in_progress_leaves_no_process(data_dir):
    pool = new_pool(data_dir, 2, [SlowStart], max_idle=0.3)
    await pool.start()
    await wait_for(lambda: not children())
    (data_dir / "slow").write_text("x")
    waiting = asyncio.ensure_future(pool.call(functools.partial(echo, 1)))
    await wait_for(lambda: bool(children()))  # the new worker's process exists, its start-up held
    assert not waiting.done() and len(pool.pids()) == 1
    closing = asyncio.ensure_future(pool.close())
    await asyncio.sleep(0)  # close() has closed the pipes and waits for the processes
    (data_dir / "slow").unlink()
    await closing
    assert not children()
    with pytest.raises(WorkerDied):
        await waiting
    # closed before the process of an on-demand start even began: nothing is left either
    pool = new_pool(data_dir, 1, max_idle=0.3)
    await pool.start()
    await wait_for(lambda: not children())
    waiting = asyncio.ensure_future(pool.call(functools.partial(echo, 2)))
    await asyncio.sleep(0)  # the call is queued and the start scheduled, not run
    await pool.close()
    assert not children()
    with pytest.raises(WorkerDied):
        await waiting


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_the_delivery_service_after_its_workers_exited_idle_delivers_or_defers_never_holds(data_dir):
    spool = {"worker_max_idle": 0.3, "retry_min": 0.5, "retry_max": 1.0, "max_plugin_attempts": 50}
    gw, svc = await start_service(data_dir, egress={"type": "null"}, spool=spool, plugins=(CrashAtStart,),
                                  workers=1)
    try:
        first = await enqueue(gw, ["a@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered", "a@example.net")), timeout=30)
        await wait_for(lambda: not children())
        (data_dir / "crash").write_text("x")  # the next worker the pool starts dies while starting
        second = await enqueue(gw, ["b@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("deferred", "b@example.net")), timeout=30)
        (data_dir / "crash").unlink()
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered", "b@example.net")), timeout=30)
    finally:
        await stop(gw, svc)
    assert [e.queue_id for e in EventRecorder.of("delivered")] == [first, second]
    assert "WorkerUnavailable" in EventRecorder.of("deferred", "b@example.net")[0].data["reply"]
    assert not children()
