"""Processing workers: the processing phases (transform, fan-out, personalize, sign) in separate
processes, so CSS inlining, HTML rewriting and RSA signing use every core (the GIL rules out threads).

The pool runs its N worker processes itself: each is ``python -m pipeline.delivery.worker_main``
(a fresh interpreter, never the parent's ``__main__``) connected by a socketpair whose parent end
the event loop reads directly (an :class:`asyncio.Protocol`): no executor manager thread, no
queue feeder thread, no multiprocessing locks (so no resource tracker) and no forkserver. Both
ends speak length-prefixed pickle frames (:data:`HEADER`); the first frame hands the worker the
config, the extra plugins, the logging settings and ``sys.path``, and the worker answers "ready"
once it has built the plugin chain. Tasks go to the worker with the fewest in flight (at most
:data:`PIPELINE` each) and their results come back matched by task id.

Each worker turns ``(context record, envelope)`` into per-recipient copies. The message bytes do
not cross the pipe: with a :class:`SpoolSource` the worker reads them from the spool by queue id
(a read-only SQLite connection, or its own PostgreSQL connection), so only a few hundred bytes go
to the worker per message. The copies come back whole: delivery (egress) stays in the main
process's event loop. ``workers = 0`` runs the chain in the main process (debugging, small tests).

A worker that dies (a segfault, the OOM killer, ``kill -9``) fails only the tasks it had in hand,
with :class:`WorkerDied` (a temporary failure: the scheduler defers and retries the message), and
is replaced at once; one that keeps dying before it is ready is restarted with a growing delay.

A worker with no task in flight for ``[spool] worker_max_idle`` seconds is stopped (like
Postfix's ``max_idle``): an idle gateway is the main process alone. When tasks queue and fewer
than N workers are running or starting, the pool starts another on demand.

A worker imports what processing needs and no more (no aiohttp, API, console, metrics, CLI or
psycopg unless the spool is on PostgreSQL); third-party modules that plugin libraries import at
module level but processing never calls (:data:`LAZY_MODULES`) load on first use only.

Workers never outlive the gateway (:mod:`pipeline.delivery.lifeline`): the kernel kills them when
the main process ends, however that ends (SIGKILL included), and they exit on EOF of their pipe.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import importlib.util
import itertools
import logging
import os
import pickle
import signal
import site
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from pipeline.chain.loader import PluginSet
from pipeline.chain.processing import CopyResult, process_message
from pipeline.chain.runner import Chain, Trace
from pipeline.config import Config
from pipeline.contract.context import MessageContext
from pipeline.contract.headers import crlf_only
from pipeline.contract.message import Message
from pipeline.delivery.lifeline import die_with_parent
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
    setup_logging(*log_settings)  # a new interpreter starts with logging unconfigured
    die_with_parent(gateway_pid)
    lazy_imports()
    config, extra_plugins = pickle.loads(settings)
    _reader = SpoolReader(source) if source is not None else None
    _worker = (build_chain(config, extra_plugins), asyncio.new_event_loop())
    _idle = IdleTrim.start()
    log.info("worker ready: %d plugins in the chain", len(_worker[0].plugins.plugins))


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
        if not self._work.is_set():  # set already: the thread has not looked yet, and reads last_done when it does
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


async def _process_task(
    record: dict[str, Any], data: bytes | int, mail_from: str, recipients: list[str]
) -> tuple[list[CopyResult], Timings]:
    """The copies of one message and the plugin timings, in the worker's event loop."""
    if _worker is None:
        raise RuntimeError("worker process was not initialised")
    if isinstance(data, int):
        if _reader is None:
            raise RuntimeError("worker process has no spool to read from")
        data = _reader.read(record["queue_id"], data)
    timings: Timings = []
    if _idle is not None:
        _idle.busy = True
    try:
        copies = await run_processing(_worker[0], record, data, mail_from, recipients, timings)
        mark_line_ends(copies)
        return copies, timings
    finally:
        if _idle is not None:
            _idle.done(time.monotonic())


def mark_line_ends(copies: list[CopyResult]) -> None:
    """Set each copy's ``crlf``: whether its bytes hold no bare CR or LF (a copy of the bytes another
    copy holds is checked once).

    Why here (issue 17, main process per message): the SMTP egress must know it before it sends
    the bytes as they are (else it lets aiosmtplib normalise them), and checking a 55 KB copy costs
    0.1-0.2 ms; a worker does it beside the processing, on another CPU, instead of the main
    process's event loop, which also runs the ingress."""
    seen: dict[int, bool] = {}
    for copy in copies:
        data = copy.data
        if data is None:
            continue
        known = seen.get(id(data))  # (the copies hold their bytes meanwhile: an id is not reused)
        if known is None:
            known = seen[id(data)] = crlf_only(data)
        copy.crlf = known


HEADER = struct.Struct("!QQB")
"""A frame's header: payload length, task id, kind (to a worker) or status (from one); the
payload is a pickle. Task id 0 is the start-up handshake."""
INIT, PROCESS, CALL = 0, 1, 2  # kinds of the frames a worker reads
OK, ERROR = 0, 1  # statuses of the frames a worker writes
PIPELINE = 2
"""Tasks in flight per worker: one being processed and one waiting in its pipe, so a worker never
idles for the round trip through the main process's event loop; a worker that dies fails these."""
WORKER_MODULE = "pipeline.delivery.worker_main"
READY_TIMEOUT = 120.0  # seconds a new worker may take to import and build its chain
MAX_RESTART_DELAY = 60.0


class WorkerDied(RuntimeError):
    """The worker process ended with this task in hand (a temporary failure: the scheduler defers
    the message and retries it, on a new worker)."""


class WorkerUnavailable(RuntimeError):
    """No worker process is running or starting (they keep dying at start-up): a temporary failure."""


def _frame(task_id: int, kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), task_id, kind) + payload


def _dump_error(exc: BaseException) -> bytes:
    """An exception as a pickle the parent can load (else a RuntimeError naming it)."""
    try:
        out = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
        pickle.loads(out)  # an exception class with extra required arguments pickles but does not load
        return out
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"), pickle.HIGHEST_PROTOCOL)


def _read_frame(stream: Any) -> tuple[int, int, bytes] | None:
    """The next frame from the parent: (task id, kind, payload); ``None`` at EOF (a short read: the
    parent closed the pipe or is gone)."""
    head = stream.read(HEADER.size)
    if len(head) != HEADER.size:
        return None
    size, task_id, kind = HEADER.unpack(head)
    body = stream.read(size)
    return (task_id, kind, body) if len(body) == size else None


def _send_frame(sock: socket.socket, task_id: int, status: int, payload: bytes) -> bool:
    """Write one frame to the parent; ``False`` when the parent closed its end (shutdown) or is gone.

    One ``sendmsg`` gathers the header and the payload: no copy of the payload (the copies of a
    message) to put 17 bytes in front of it, and one system call however large it is."""
    head = HEADER.pack(len(payload), task_id, status)
    try:
        sent = sock.sendmsg((head, payload))
        if sent < len(head) + len(payload):  # cut short (a signal during a long write): the rest
            if sent < len(head):
                sock.sendall(head[sent:])
                sent = len(head)
            with memoryview(payload) as view:
                sock.sendall(view[sent - len(head) :])
    except OSError:
        return False
    return True


def _answer(sock: socket.socket, frame: tuple[int, int, bytes]) -> bool:
    """Run a :meth:`WorkerPool.call` function outside the event loop (it may run a loop of its
    own; messages are :func:`_serve`'s) and send its answer; ``False`` when the parent is gone."""
    task_id, _, body = frame
    status = OK
    try:
        value: Any = pickle.loads(body)()
        out = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        status, out = ERROR, _dump_error(exc)
    return _send_frame(sock, task_id, status, out)


async def _serve(sock: socket.socket, stream: Any) -> tuple[int, int, bytes] | None:
    """Process message frames one after another in one task of the worker's event loop; return
    the first other frame (for :func:`_answer`), or ``None`` at EOF or when the parent is gone.

    One task for all messages: a ``run_until_complete`` per message cost a task, the loop's set-up
    and two loop iterations (each an ``epoll_wait``) even when every hook is synchronous. An async
    hook is awaited here as it was there (in a task, under its timeout); after each message the
    loop gets one turn, so callbacks a hook scheduled still run then, as they did."""
    while True:
        frame = _read_frame(stream)
        if frame is None or frame[1] != PROCESS:
            return frame
        task_id, _, body = frame
        status = OK
        try:
            value = await _process_task(*pickle.loads(body))
            out = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            status, out = ERROR, _dump_error(exc)
        if not _send_frame(sock, task_id, status, out):
            return None
        await asyncio.sleep(0)


def worker_main(fd: int) -> None:
    """The body of a worker process: the start-up frame, then one task after another until EOF.

    Started by :class:`WorkerPool` with SIGINT and SIGTERM blocked: the parent decides when to
    stop (SIGTERM/Ctrl-C reach the whole process group) and a worker killed mid-message would turn
    a clean shutdown into a retry. Ignoring them is safe only because the worker exits when the
    gateway is gone (:func:`die_with_parent`, and EOF here)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    lazy_imports()  # before anything imports the plugin libraries
    sock = socket.socket(fileno=fd)
    stream = sock.makefile("rb")
    frame = _read_frame(stream)
    if frame is None:
        return
    try:
        init = pickle.loads(frame[2])
        sys.path[:] = init["sys_path"]
        if init.get("main_path"):  # a plugin class defined in the parent's __main__ (a script)
            import multiprocessing.spawn  # only the import machinery: no helper process

            multiprocessing.spawn.prepare({"init_main_from_path": init["main_path"]})
        _init_worker(init["settings"], init["gateway_pid"], init["log_settings"], init["source"])
    except BaseException as exc:
        log.exception("worker start-up failed")
        try:
            sock.sendall(_frame(0, ERROR, _dump_error(exc)))
        except OSError:
            pass
        raise SystemExit(1) from None
    try:
        sock.sendall(_frame(0, OK, pickle.dumps(os.getpid())))
    except OSError:  # the gateway stopped (or died) while this worker was starting
        return
    assert _worker is not None
    loop = _worker[1]
    while True:
        frame = loop.run_until_complete(_serve(sock, stream))
        if frame is None or not _answer(sock, frame):
            return


class _Task:
    __slots__ = ("task_id", "kind", "payload", "future")

    def __init__(self, task_id: int, kind: int, payload: bytes, future: asyncio.Future[Any]) -> None:
        self.task_id, self.kind, self.payload, self.future = task_id, kind, payload, future


class _Worker(asyncio.Protocol):
    """One worker process and the parent end of its socketpair, read by the event loop."""

    def __init__(self, pool: WorkerPool, slot: int, proc: subprocess.Popen[bytes]) -> None:
        self.pool = pool
        self.slot = slot
        self.proc = proc
        self.pid = proc.pid
        self.transport: asyncio.Transport | None = None
        self.tasks: dict[int, asyncio.Future[Any]] = {}
        self.ready = False
        self.ready_at = 0.0
        self.idle_since = 0.0  # monotonic time its last task finished (or it became ready)
        self.gone = False
        self.retiring = False  # stopped by the pool for being idle: its end is not a death
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._need = HEADER.size  # bytes the next frame needs in the buffer before it can be parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a socket's transport: asyncio's is an asyncio.Transport, uvloop's only behaves as one
        self.transport = cast(asyncio.Transport, transport)

    def send(self, task: _Task) -> None:
        assert self.transport is not None
        self.tasks[task.task_id] = task.future
        self.transport.write(_frame(task.task_id, task.kind, task.payload))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if not buf and len(data) >= HEADER.size:
            size = HEADER.unpack_from(data)[0]
            if len(data) == HEADER.size + size:  # the usual case: one whole frame, parsed without a copy
                self._deliver(data, 0)
                return
        buf += data
        if len(buf) < self._need:
            return
        pos = 0
        while len(buf) - pos >= HEADER.size:
            size = HEADER.unpack_from(buf, pos)[0]
            end = pos + HEADER.size + size
            if len(buf) < end:
                self._need = end - pos
                break
            self._deliver(buf, pos)
            pos = end
        else:
            self._need = HEADER.size
        if pos:
            del buf[:pos]
            if not buf:
                self._need = HEADER.size

    def _deliver(self, data: bytes | bytearray, pos: int) -> None:
        size, task_id, status = HEADER.unpack_from(data, pos)
        with memoryview(data) as view, view[pos + HEADER.size:pos + HEADER.size + size] as body:
            try:
                value = pickle.loads(body)
            except Exception as exc:  # a result that does not load fails its task, not the worker
                value, status = exc, ERROR
        self.pool._result(self, task_id, status, value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._lost(self)


class WorkerPool:
    """N worker processes, each replaced when it dies; or the main process when N is 0."""

    def __init__(self, config: Config, workers: int, chain: Chain, extra_plugins: list[Any] | None = None) -> None:
        self.config = config
        self.workers = workers
        self.chain = chain
        self.extra_plugins = list(extra_plugins or [])
        self.metrics: LatencyMetrics | None = None  # where the plugin latencies the processes measure go
        self.source: SpoolSource | None = None  # set: workers read the bytes of spooled messages themselves
        self._idle: IdleTrim | None = None  # the main process's heap, trimmed when no message is in processing
        self._in_flight = 0
        self._slots: list[_Worker | None] = []
        self._failures: list[int] = []  # per slot: deaths in a row before (or just after) becoming ready
        self._restarts: dict[int, asyncio.TimerHandle | asyncio.Task[Any]] = {}
        self._queue: collections.deque[_Task] = collections.deque()
        self._ids = itertools.count(1)
        self._init: bytes = b""
        self._running = False
        self._reaping: set[asyncio.Task[None]] = set()
        self._spawned: list[subprocess.Popen[bytes]] = []  # every process not known to be reaped
        self.max_idle = config.spool.worker_max_idle  # seconds; 0: workers never exit when idle
        self._idle_timer: asyncio.TimerHandle | None = None  # one per pool: the earliest idle worker's deadline
        self._vacant: list[int] = []  # slots whose worker exited idle: started again when tasks queue

    # -- processes ------------------------------------------------------------------------

    def _init_frame(self) -> bytes:
        main = sys.modules.get("__main__")
        in_main = any(getattr(p, "__module__", None) == "__main__" for p in self.extra_plugins)
        init = {
            "sys_path": list(sys.path),
            "main_path": getattr(main, "__file__", None) if in_main else None,
            # pickled apart: loading it imports the plugin modules, after lazy_imports in the worker
            "settings": pickle.dumps((self.config, self.extra_plugins)),
            "gateway_pid": os.getpid(),
            "log_settings": current_settings(),
            "source": self.source,
        }
        return _frame(0, INIT, pickle.dumps(init, pickle.HIGHEST_PROTOCOL))

    async def _spawn(self, slot: int) -> _Worker:
        """Start the worker of ``slot`` (from the event loop's thread: the kernel's parent-death
        signal fires when the thread that forked the child ends)."""
        parent_end, child_end = socket.socketpair()
        flags: Callable[[], list[str]] = getattr(subprocess, "_args_from_interpreter_flags", list)
        command = [sys.executable, *flags(), "-m", WORKER_MODULE, str(child_end.fileno())]
        blocked = {signal.SIGINT, signal.SIGTERM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # inherited: the worker ignores them from birth
        try:
            proc = subprocess.Popen(command, pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
                                    env=_worker_env())
        except BaseException:
            parent_end.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            child_end.close()
        self._spawned = [p for p in self._spawned if p.returncode is None]
        self._spawned.append(proc)
        worker = _Worker(self, slot, proc)
        self._slots[slot] = worker
        loop = asyncio.get_running_loop()
        try:
            await loop.create_unix_connection(lambda: worker, sock=parent_end)
        except BaseException:  # cancelled by close(): the process must not wait for a pipe nobody holds
            parent_end.close()
            _kill(proc)
            raise
        if worker.transport is not None and not worker.gone:
            worker.transport.write(self._init)
        timer = loop.call_later(READY_TIMEOUT, self._ready_timeout, worker)
        worker.started.add_done_callback(lambda _: timer.cancel())
        return worker

    def _ready_timeout(self, worker: _Worker) -> None:
        if not worker.ready and not worker.gone:
            log.error("worker process %d not ready after %.0f s; killing it", worker.pid, READY_TIMEOUT)
            _kill(worker.proc)

    async def start(self) -> None:
        """Start the processes and wait until each has built its chain (start-up errors show here)."""
        if self._idle is None:
            self._idle = IdleTrim.start()
        if self.workers == 0:
            return
        self._init = self._init_frame()
        self._slots = [None] * self.workers
        self._failures = [0] * self.workers
        started = [await self._spawn(slot) for slot in range(self.workers)]
        try:
            await asyncio.gather(*(w.started for w in started))
        except BaseException:
            await self.close()
            raise
        self._running = True
        for slot, worker in enumerate(self._slots):
            if worker is None:  # ready, then died before the pool was running: replace it now
                self._restart(slot)
        self._stop_idle()  # arms the idle timer for the workers that are all idle now

    def _restart(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        if not self._running:
            return
        task = asyncio.ensure_future(self._spawn(slot))
        self._restarts[slot] = task

        def done(t: asyncio.Task[Any]) -> None:
            if self._restarts.get(slot) is t:
                del self._restarts[slot]
            if not t.cancelled() and t.exception() is not None:  # could not even start the process
                log.error("starting worker process %d failed: %s", slot, t.exception())
                self._schedule_restart(slot)

        task.add_done_callback(done)

    def _schedule_restart(self, slot: int) -> None:
        self._failures[slot] += 1
        failures = self._failures[slot]
        delay = 0.0 if failures <= 1 else min(MAX_RESTART_DELAY, 0.5 * 2 ** (failures - 2))
        if delay:
            log.error("worker process %d failed %d times in a row at start-up; next try in %.1f s",
                      slot, failures, delay)
            self._restarts[slot] = asyncio.get_running_loop().call_later(delay, self._restart, slot)
            self._fail_queue_if_nobody_serves()
        else:
            self._restart(slot)

    def _lost(self, worker: _Worker) -> None:
        """The worker's pipe closed: it exited, was killed, or the pool closed it."""
        if worker.gone:
            return
        worker.gone = True
        if self._slots and self._slots[worker.slot] is worker:
            self._slots[worker.slot] = None
        tasks, worker.tasks = worker.tasks, {}
        reason = WorkerDied(f"worker process {worker.pid} ended with this message in hand")
        for future in tasks.values():
            if not future.done():
                future.set_exception(reason)
        if not worker.started.done():
            worker.started.set_exception(WorkerDied(f"worker process {worker.pid} ended before it was ready"))
            worker.started.exception()  # retrieved: a restart's failure is logged, not left to the loop
        if not self._running:
            return  # closing (close() waits for the process) or a failed start (start() raises)
        if worker.retiring:  # stopped for being idle: collect its exit status, nothing to replace
            reap = asyncio.ensure_future(self._collect(worker))
            self._reaping.add(reap)
            reap.add_done_callback(self._reaping.discard)
            return
        reap = asyncio.ensure_future(self._reap(worker, len(tasks)))
        self._reaping.add(reap)
        reap.add_done_callback(self._reaping.discard)
        quick = not worker.ready or time.monotonic() - worker.ready_at < 1.0
        if quick:
            self._schedule_restart(worker.slot)
        else:
            self._failures[worker.slot] = 0
            self._restart(worker.slot)

    async def _reap(self, worker: _Worker, in_flight: int) -> None:
        """Collect the exit status of a worker that died (one that closed its pipe but lives on is killed)."""
        _kill(worker.proc)
        code = await _wait_exit(worker.proc)
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        log.error("worker process %d ended (%s) with %d messages in hand; starting another",
                  worker.pid, how, in_flight)

    async def _collect(self, worker: _Worker) -> None:
        """Wait for a worker stopped for being idle to exit (it does on EOF; killed after a while if not)."""
        await _wait_exit(worker.proc)

    # -- idle workers ---------------------------------------------------------------------

    def _idle_from(self, worker: _Worker, now: float) -> None:
        """``worker`` has no task in flight since ``now``: arm the pool's idle timer unless it is
        armed already (for an earlier deadline), so finishing a task creates no timer object."""
        worker.idle_since = now
        if self._idle_timer is None and self.max_idle > 0 and self._running:
            self._idle_timer = asyncio.get_running_loop().call_later(self.max_idle, self._stop_idle)

    def _stop_idle(self) -> None:
        """Stop the workers idle for ``max_idle`` seconds, then re-arm the pool's one timer for the
        next idle worker's deadline (a busy worker re-arms it when its last task finishes)."""
        self._idle_timer = None
        if not self._running or self.max_idle <= 0:
            return
        now = time.monotonic()
        due: float | None = None
        for worker in self._slots:
            if worker is None or not worker.ready or worker.gone or worker.tasks:
                continue
            deadline = worker.idle_since + self.max_idle
            if deadline <= now:
                self._retire(worker)
            elif due is None or deadline < due:
                due = deadline
        if due is not None:
            self._idle_timer = asyncio.get_running_loop().call_later(due - now, self._stop_idle)

    def _retire(self, worker: _Worker) -> None:
        """Stop an idle worker: it reads EOF and exits; its slot is free for an on-demand start."""
        log.info("worker process %d idle for %g s; stopped", worker.pid, self.max_idle)
        worker.retiring = True
        self._slots[worker.slot] = None
        self._failures[worker.slot] = 0  # it started and served: not a start-up failure in a row
        self._vacant.append(worker.slot)
        if worker.transport is not None:
            worker.transport.close()  # connection_lost -> _lost, which only collects the exit status
        else:
            self._lost(worker)

    def _grow(self) -> None:
        """Start workers in vacant slots for the tasks that wait (one per :data:`PIPELINE` tasks
        not covered by workers already starting), up to ``workers`` in all."""
        starting = 0
        for slot, worker in enumerate(self._slots):
            if (worker is not None and not worker.ready) or isinstance(self._restarts.get(slot), asyncio.Task):
                starting += 1
        need = -(-len(self._queue) // PIPELINE) - starting
        while need > 0 and self._vacant:
            slot = self._vacant.pop()
            log.info("starting worker process %d on demand (%d tasks waiting)", slot, len(self._queue))
            self._restart(slot)
            need -= 1

    def _serving(self) -> bool:
        """A worker is running or starting (else all are waiting out a start-up failure delay)."""
        return any(w is not None for w in self._slots) or any(
            isinstance(r, asyncio.Task) for r in self._restarts.values())

    def _fail_queue_if_nobody_serves(self) -> None:
        if self._serving():
            return
        error = WorkerUnavailable("no worker process is running (restarting after start-up failures)")
        while self._queue:
            future = self._queue.popleft().future
            if not future.done():
                future.set_exception(error)

    # -- tasks ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Send queued tasks to the ready workers with the fewest in flight."""
        queue = self._queue
        while queue:
            best: _Worker | None = None
            for w in self._slots:
                if w is not None and w.ready and len(w.tasks) < PIPELINE and (
                        best is None or len(w.tasks) < len(best.tasks)):
                    best = w
            if best is None:
                if self._vacant:
                    self._grow()
                return
            task = queue.popleft()
            if not task.future.done():  # cancelled while queued
                best.send(task)

    def _result(self, worker: _Worker, task_id: int, status: int, value: Any) -> None:
        if task_id == 0:  # the start-up handshake
            if status == OK:
                worker.ready, worker.ready_at = True, time.monotonic()
                self._idle_from(worker, worker.ready_at)
                if not worker.started.done():
                    worker.started.set_result(None)
                log.debug("worker process %d ready", worker.pid)
                self._dispatch()
            else:
                log.error("worker process %d failed to start: %s: %s", worker.pid, type(value).__name__, value)
                if not worker.started.done():
                    worker.started.set_exception(value if isinstance(value, Exception) else RuntimeError(value))
                    worker.started.exception()
            return
        tasks = worker.tasks
        future = tasks.pop(task_id, None)
        if future is not None and not future.done():
            if status == OK:
                future.set_result(value)
            else:
                future.set_exception(value if isinstance(value, BaseException) else RuntimeError(value))
        if not tasks:  # idle from now on, unless _dispatch hands it more
            self._idle_from(worker, time.monotonic())
        self._dispatch()

    def _submit(self, kind: int, args: Any) -> asyncio.Future[Any]:
        """Queue a task; the future its result resolves (a plain function: awaited by the caller,
        no coroutine of its own per message)."""
        if not self._running:
            raise RuntimeError("no worker processes")
        if not self._serving() and not self._vacant:  # a vacant slot starts a worker for this task
            raise WorkerUnavailable("no worker process is running (restarting after start-up failures)")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Task(next(self._ids), kind, pickle.dumps(args, pickle.HIGHEST_PROTOCOL), future))
        self._dispatch()
        return future

    async def process(
        self, record: dict[str, Any], data: bytes, mail_from: str, recipients: list[str]
    ) -> list[CopyResult]:
        """Copies for ``recipients``; raises if the worker failed (the caller defers the message)."""
        self._in_flight += 1
        if self._idle is not None:
            self._idle.busy = True
        try:
            timings: Timings
            if self.workers == 0 or not self._slots:  # no processes (or not started, or closed): in-process
                timings = []
                copies = await run_processing(self.chain, record, data, mail_from, recipients, timings)
            else:
                sent: bytes | int = len(data) if self.source is not None and record.get("queue_id") else data
                copies, timings = await self._submit(PROCESS, (record, sent, mail_from, recipients))
            if timings:
                self._observe(timings)
            return copies  # type: ignore[no-any-return]
        finally:
            self._in_flight -= 1
            if self._idle is not None and self._in_flight == 0:
                self._idle.done(time.monotonic())

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (an importable function) in one worker process (tests and diagnostics)."""
        return await self._submit(CALL, fn)  # type: ignore[no-any-return]

    def pids(self) -> list[int]:
        """The process ids of the running (or starting) workers; not of those stopped for being idle."""
        return [w.pid for w in self._slots if w is not None and not w.gone]

    def _observe(self, timings: Timings) -> None:
        if self.metrics is not None:
            for phase, plugin, seconds in timings:
                self.metrics.observe("plugin_latency_seconds", seconds, phase=phase, plugin=plugin)

    async def close(self) -> None:
        """Stop the workers: each finishes the task in hand and exits on EOF of its pipe."""
        if self._idle is not None:
            self._idle.stop()
            self._idle = None
        self._running = False
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._vacant.clear()
        for pending in self._restarts.values():
            pending.cancel()
        self._restarts.clear()
        closing = WorkerDied("the worker pool is closing")
        while self._queue:
            future = self._queue.popleft().future
            if not future.done():
                future.set_exception(closing)
        workers = [w for w in self._slots if w is not None]
        for w in workers:
            if w.transport is not None:
                w.transport.close()  # the worker reads EOF; connection_lost fails what it had in hand
            else:
                self._lost(w)
        self._slots = []
        procs, self._spawned = self._spawned, []
        await asyncio.gather(*(_wait_exit(p) for p in procs if p.returncode is None), *self._reaping,
                             return_exceptions=True)


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """The exit status of a worker that was asked to stop (EOF), killed if it does not within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            return await _exited(proc)
    except TimeoutError:
        log.error("worker process %d did not exit %.0f s after its pipe closed; killing it", proc.pid, timeout)
        _kill(proc)
        return await _exited(proc)


async def _exited(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` to end and reap it: on its pidfd in the event loop (Linux 5.3+), so a
    worker stopped for being idle costs no thread; else in a thread blocked in ``wait``."""
    if proc.returncode is not None:
        return proc.returncode
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux), or already reaped
        return await asyncio.to_thread(proc.wait)
    try:
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        try:
            loop.add_reader(fd, readable)
        except NotImplementedError:  # an event loop without add_reader
            return await asyncio.to_thread(proc.wait)
        try:
            await ended
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return proc.wait()  # a zombie by now: returns at once


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _worker_env() -> dict[str, str]:
    """The environment of a worker: the gateway's, with this package's root on PYTHONPATH unless a
    new interpreter finds it anyway (installed; the working directory). The full ``sys.path``
    follows in the start-up frame."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    paths = env.get("PYTHONPATH", "")
    known = [*paths.split(os.pathsep), os.getcwd(), *site.getsitepackages(), site.getusersitepackages()]
    if os.path.realpath(root) not in {os.path.realpath(p) for p in known if p}:
        env["PYTHONPATH"] = root + (os.pathsep + paths if paths else "")
    return env
