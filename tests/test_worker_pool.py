"""The worker pool runs its processes itself (issue 17: main-process CPU, idle tree RSS).

The gateway's process tree is the main process and its N workers, nothing else (no forkserver,
no multiprocessing resource tracker), and the main process runs no executor-manager or queue
feeder thread. A worker killed in the middle of a message fails that message only, as a
temporary failure the scheduler retries; the worker is replaced and the others keep serving.
A worker that dies while starting is retried with a growing delay, never in a tight loop.
Results come back to the task that asked for them, however many are in flight.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline import Plugin, hookimpl
from pipeline.chain.driver import make_config
from pipeline.delivery.workers import WorkerDied, WorkerPool, WorkerUnavailable, build_chain
from tests.support.smtp_sink import EventRecorder
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


class CrashAtStart(Plugin):
    """Kills its worker while the chain is being built, as long as ``<data_dir>/crash`` exists."""

    name = "crash_at_start"

    def __init__(self, config: Any, env: Any) -> None:
        super().__init__(config, env)
        in_worker = getattr(sys.modules["__main__"].__spec__, "name", None) == "pipeline.delivery.worker_main"
        if in_worker and (env.data_dir / "crash").exists():
            os._exit(3)


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


def new_pool(data_dir: Path, workers: int, plugins: list[Any] | None = None) -> WorkerPool:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = make_config({"gateway": {"data_dir": str(data_dir)}, "egress": {"type": "null"}})
    return WorkerPool(config, workers, build_chain(config, plugins or []), plugins or [])


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
        (data_dir / "crash").unlink()
        fixed = len(pool_log.lines)
        await pool_log.until(lambda lines: any(line.endswith(" ready") for line in lines[fixed:]))
        assert (await pool.call(functools.partial(echo, 2)))[0] == 2
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
