"""Processing workers: the processing phases (transform, fan-out, personalize, sign) in separate
processes, so CSS inlining, HTML rewriting and RSA signing use every core (the GIL rules out threads).

Each worker process builds the plugin chain once from the config and the plugin set
(initializer) and then turns ``(context record, envelope)`` into per-recipient copies. The
message bytes do not cross the pipe: with a :class:`SpoolSource` the worker reads them from the
spool by queue id (a read-only SQLite connection, or its own PostgreSQL connection), so only a
few hundred bytes go to the worker per message. The copies come back whole: delivery (egress)
stays in the main process's event loop. ``workers = 0`` runs the chain in the main process
(debugging, small tests).

A worker imports what processing needs and no more (no aiohttp, API, console, metrics, CLI or
psycopg unless the spool is on PostgreSQL); third-party modules that plugin libraries import at
module level but processing never calls (:data:`LAZY_MODULES`) load on first use only.

Workers never outlive the gateway (:mod:`pipeline.delivery.lifeline`): they die with the
forkserver, which dies with the main process, however that ends (SIGTERM to the group, SIGKILL).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import io
import logging
import multiprocessing
import os
import pickle
import signal
import sqlite3
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import ForkServerContext, ForkServerProcess, set_spawning_popen
from typing import Any, TypeVar

from pipeline.chain.loader import PluginSet
from pipeline.chain.processing import CopyResult, process_message
from pipeline.chain.runner import Chain, Trace
from pipeline.config import Config
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.delivery.lifeline import die_with_parent, start_forkserver
from pipeline.ports import LatencyMetrics
from pipeline.toolkit.logs import current_settings, setup_logging

log = logging.getLogger("smtpgate.workers")
T = TypeVar("T")

_worker: tuple[Chain, asyncio.AbstractEventLoop] | None = None
_reader: SpoolReader | None = None

LAZY_MODULES = ("requests", "dns.resolver")
"""Imported at module level by premailer (remote stylesheets, which the gateway never fetches)
and dkimpy (DNS look-ups for verifying, never for signing): about 9 MiB per worker, so a worker
loads them on first attribute access instead (:class:`_Deferred`)."""


@dataclass(frozen=True)
class SpoolSource:
    """Where a worker reads a claimed message's bytes: ``kind`` "sqlite" (``where`` the spool.db
    path, opened read-only) or "postgres" (``where`` the ``[storage] url``)."""

    kind: str
    where: str


class SpoolReader:
    """A worker's own read-only access to the spool's message bytes (one connection, opened on first use)."""

    def __init__(self, source: SpoolSource) -> None:
        self.source = source
        self._conn: Any = None

    def read(self, queue_id: str, size: int) -> bytes:
        """The spooled bytes of ``queue_id``; raises (a temporary failure for the caller) when the
        row is missing or not ``size`` bytes long."""
        try:
            data = self._select(queue_id)
        except Exception:
            # A connection the database dropped (a PostgreSQL restart) fails once: retry on a new one,
            # so a restart does not count as a processing failure of the message in hand.
            self.close()
            try:
                data = self._select(queue_id)
            except Exception:
                self.close()
                raise
        if data is None:
            raise LookupError(f"{queue_id} is not in the spool")
        if len(data) != size:
            raise ValueError(f"{queue_id}: the spool holds {len(data)} bytes, the claim had {size}")
        return data

    def _select(self, queue_id: str) -> bytes | None:
        if self._conn is None:
            self._conn = self._connect()
        if self.source.kind == "sqlite":
            row = self._conn.execute("SELECT data FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
        else:
            row = self._conn.execute("SELECT data FROM messages WHERE queue_id=%s", (queue_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def _connect(self) -> Any:
        if self.source.kind == "sqlite":
            uri = f"file:{urllib.parse.quote(self.source.where)}?mode=ro"  # a data dir may have ? or # in its name
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            return conn
        import psycopg  # only a worker of a PostgreSQL spool loads it

        return psycopg.connect(self.source.where, autocommit=True, connect_timeout=10)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the spool connection failed", exc_info=True)


class _Deferred(types.ModuleType):
    """A module that imports itself on first attribute access (``__spec__`` and ``__name__`` are
    set, so an ``import`` statement does not load it: :class:`importlib.util.LazyLoader` modules
    load on the ``__spec__`` check CPython's import does)."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        vars(self).update(vars(real))  # later look-ups find the real names directly
        return getattr(real, attr)


def lazy_imports(names: tuple[str, ...] = LAZY_MODULES) -> None:
    """Make ``names`` load on first attribute access (worker processes only: the main process
    imports them for real where it uses them)."""
    for name in names:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)  # imports the parent package of a submodule
        except ImportError:
            continue
        if spec is None:
            continue
        module = _Deferred(name)
        module.__spec__ = spec
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def build_chain(config: Config, extra_plugins: list[Any]) -> Chain:
    """The processing chain of a worker: the same plugins, in the same order, as the gateway's."""
    return Chain(PluginSet(config, extra_plugins))


def _init_worker(
    settings: bytes, gateway_pid: int, log_settings: tuple[int, str] = (logging.INFO, "text"),
    source: SpoolSource | None = None,
) -> None:
    """Runs once per worker process: log like the gateway, tie its life to the gateway's, then build the chain.

    ``settings`` is the pickled ``(config, extra plugin classes)``: unpickling it imports the
    plugin modules, which must happen after :func:`lazy_imports` (their libraries import
    ``requests`` and ``dns.resolver`` at module level)."""
    global _worker, _reader, _idle
    setup_logging(*log_settings)  # a forkserver child starts with logging unconfigured
    # The parent decides when to stop (SIGTERM/Ctrl-C reach the whole process group); a worker
    # killed mid-message would turn a clean shutdown into a retry. Ignoring them is safe only
    # because the worker exits by itself once the gateway is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(gateway_pid)
    lazy_imports()
    config, extra_plugins = pickle.loads(settings)
    _reader = SpoolReader(source) if source is not None else None
    _worker = (build_chain(config, extra_plugins), asyncio.new_event_loop())
    _idle = IdleTrim.start()
    log.info("worker ready: %d plugins in the chain", len(_worker[0].plugins.plugins))


def _ping() -> bool:
    return _worker is not None


def loaded_modules() -> list[str]:
    """The modules this process has really imported (a deferred one is replaced by the real module
    when loaded): what a worker carries, for tests and diagnostics (``WorkerPool.call(loaded_modules)``)."""
    return sorted(name for name, mod in sys.modules.items() if not isinstance(mod, _Deferred))


Timings = list[tuple[str, str, float]]
"""(phase, plugin, seconds) of each plugin call, returned to the main process for /metrics."""


async def run_processing(
    chain: Chain, record: dict[str, Any], data: bytes, mail_from: str, recipients: list[str],
    timings: Timings | None = None,
) -> list[CopyResult]:
    """The processing phases for one spooled message (shared by worker processes and inline mode)."""
    message = Message(data, mail_from, recipients)
    ctx = MessageContext.from_record(record, message)
    trace = Trace() if timings is not None else None
    copies = await process_message(chain, ctx, trace=trace, recipients=list(recipients))
    if trace is not None and timings is not None:
        timings.extend((e.phase, e.plugin, e.ms / 1000) for e in trace.entries if not e.verdict.startswith("skipped"))
    return copies


class IdleTrim:
    """Hands freed heap back to the OS once processing has been idle for ``after`` seconds.

    A copy is about the message's size and a 100-recipient message's copies are pickled back
    together, so after a busy spell glibc keeps tens of MiB of freed heap (measured after a run:
    a worker 84 MiB, 70 after ``malloc_trim(0)``; the main process, which receives the copies,
    130 and 118). Trimming only when idle keeps the call off the processing path; ``tick`` is
    driven by a thread that sleeps until a message finishes (no wake-ups while idle), or
    directly in tests. Used in each worker and by the pool in the main
    process."""

    def __init__(self, trim: Callable[[], object], after: float = 1.0) -> None:
        self.trim = trim
        self.after = after
        self.busy = False
        self.last_done = 0.0  # monotonic time the last message finished
        self._trimmed = 0.0  # last_done when we last trimmed: once per idle spell
        self._stop = threading.Event()
        self._work = threading.Event()  # set when a message finishes: an idle process never wakes the thread

    def tick(self, now: float) -> bool:
        """Trim if idle long enough since a message finished and not yet trimmed since; whether it did."""
        if self.busy or self.last_done <= self._trimmed or now - self.last_done < self.after:
            return False
        self._trimmed = self.last_done
        self.trim()
        return True

    def done(self, now: float) -> None:
        """A message finished at ``now`` (monotonic)."""
        self.busy, self.last_done = False, now
        self._work.set()

    def run(self) -> None:
        while not self._stop.is_set():
            self._work.wait()
            self._work.clear()
            while not self._stop.wait(self.after):  # until the trim after this busy spell is done
                if self.tick(time.monotonic()) or (not self.busy and self.last_done <= self._trimmed):
                    break

    def stop(self) -> None:
        self._stop.set()
        self._work.set()

    @classmethod
    def start(cls) -> IdleTrim | None:
        """A trimming thread where the C library has ``malloc_trim`` (glibc), else ``None``."""
        try:
            trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            return None
        idle = cls(lambda: trim(0))
        threading.Thread(target=idle.run, name="smtpgate-trim", daemon=True).start()
        return idle


_idle: IdleTrim | None = None


def _process_in_worker(
    record: dict[str, Any], data: bytes | int, mail_from: str, recipients: list[str]
) -> tuple[list[CopyResult], Timings]:
    """``data``: the message bytes, or their length when the worker reads them from the spool."""
    if _worker is None:
        raise RuntimeError("worker process was not initialised")
    chain, loop = _worker
    if isinstance(data, int):
        if _reader is None:
            raise RuntimeError("worker process has no spool to read from")
        data = _reader.read(record["queue_id"], data)
    timings: Timings = []
    if _idle is not None:
        _idle.busy = True
    try:
        return loop.run_until_complete(run_processing(chain, record, data, mail_from, recipients, timings)), timings
    finally:
        if _idle is not None:
            _idle.done(time.monotonic())


MAIN_KEYS = ("init_main_from_path", "init_main_from_name")
"""Preparation data that makes a multiprocessing child import the parent's ``__main__`` (for the
``smtpgate`` console script: the whole CLI, aiohttp, the API, the console and psycopg, 30 MiB per
worker that processing never uses; ``python -m pipeline.app.cli`` runs a package's ``__main__``,
which multiprocessing already skips)."""


class _WorkerPopen(popen_forkserver.Popen):
    """The forkserver's ``Popen`` with the parent's ``__main__`` left out of the preparation data.

    Same steps as CPython's ``popen_forkserver.Popen._launch`` (3.11-3.13); the one difference is
    the filtered ``prep_data``. Processing needs nothing from ``__main__``: the worker's functions
    and every plugin class live in importable modules (a plugin class defined in ``__main__``
    keeps the standard behaviour, :meth:`WorkerPool._new_executor`)."""

    def _launch(self, process_obj: Any) -> None:
        prep_data = {k: v for k, v in spawn.get_preparation_data(process_obj._name).items() if k not in MAIN_KEYS}
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))  # type: ignore[attr-defined]
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _WorkerProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _WorkerPopen(process_obj)


class _WorkerContext(ForkServerContext):
    """The forkserver context, starting processes without the parent's ``__main__``."""

    Process = _WorkerProcess  # type: ignore[assignment]


class WorkerPool:
    """N worker processes (forkserver), rebuilt if one dies; or the main process when N is 0."""

    def __init__(self, config: Config, workers: int, chain: Chain, extra_plugins: list[Any] | None = None) -> None:
        self.config = config
        self.workers = workers
        self.chain = chain
        self.extra_plugins = list(extra_plugins or [])
        self._executor: ProcessPoolExecutor | None = None
        self.metrics: LatencyMetrics | None = None  # where the plugin latencies the processes measure go
        self.source: SpoolSource | None = None  # set: workers read the bytes of spooled messages themselves
        self._idle: IdleTrim | None = None  # the main process's heap, trimmed when no message is in processing
        self._in_flight = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        in_main = any(getattr(p, "__module__", None) == "__main__" for p in self.extra_plugins)
        known = sys.version_info < (3, 14)  # _WorkerPopen copies _launch as CPython 3.11-3.13 have it
        ctx = _WorkerContext() if known and not in_main else multiprocessing.get_context("forkserver")
        start_forkserver()
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(pickle.dumps((self.config, self.extra_plugins)), os.getpid(), current_settings(), self.source),
        )

    async def start(self) -> None:
        """Start the processes and wait until each has built its chain (start-up errors show here)."""
        if self._idle is None:
            self._idle = IdleTrim.start()
        if self.workers == 0:
            return
        self._executor = self._new_executor()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _ping) for _ in range(self.workers)))

    async def process(
        self, record: dict[str, Any], data: bytes, mail_from: str, recipients: list[str]
    ) -> list[CopyResult]:
        """Copies for ``recipients``; raises if the worker failed (the caller defers the message)."""
        self._in_flight += 1
        if self._idle is not None:
            self._idle.busy = True
        try:
            return await self._process(record, data, mail_from, recipients)
        finally:
            self._in_flight -= 1
            if self._idle is not None and self._in_flight == 0:
                self._idle.done(time.monotonic())

    async def _process(
        self, record: dict[str, Any], data: bytes, mail_from: str, recipients: list[str]
    ) -> list[CopyResult]:
        timings: Timings = []
        if self.workers == 0 or self._executor is None:
            copies = await run_processing(self.chain, record, data, mail_from, recipients, timings)
            self._observe(timings)
            return copies
        loop = asyncio.get_running_loop()
        executor = self._executor
        sent: bytes | int = len(data) if self.source is not None and record.get("queue_id") else data
        try:
            copies, timings = await loop.run_in_executor(
                executor, _process_in_worker, record, sent, mail_from, recipients)
            self._observe(timings)
            return copies
        except BrokenProcessPool:
            if self._executor is executor:
                log.error("a worker process died; starting a new pool")
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
            raise

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (an importable function) in one worker process (tests and diagnostics)."""
        if self._executor is None:
            raise RuntimeError("no worker processes")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _observe(self, timings: Timings) -> None:
        if self.metrics is not None:
            for phase, plugin, seconds in timings:
                self.metrics.observe("plugin_latency_seconds", seconds, phase=phase, plugin=plugin)

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.stop()
            self._idle = None
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
