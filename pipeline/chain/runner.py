"""The chain runner: runs one phase over the configured plugins.

Rules: config order; a plugin whose feature is off for this message is skipped; awaitable
results are awaited; every call has a timeout; the first verdict stops the phase; an exception,
a timeout or a non-verdict return value fails closed as ``TempFail 451 4.3.0`` with the
plugin's name logged (never "continue": an unsigned or untracked message must not slip out).
Each call is recorded in a :class:`Trace`: phase, plugin, verdict, milliseconds, edits.

Hook calls are bound once at start-up; the hot path is a loop over prepared tuples.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.chain.loader import PluginSet
from pipeline.contract.context import Event
from pipeline.contract.hookspecs import ALL_PHASES
from pipeline.contract.message import Edit, current_actor
from pipeline.contract.verdicts import PLUGIN_FAILURE, Verdict, verdict_name

log = logging.getLogger("smtpgate.chain")


class PluginTimeout(BaseException):
    """A synchronous hook ran past its deadline.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that an ``except Exception`` inside the
    plugin or a library it calls cannot swallow it and carry on past the deadline.
    """


@dataclass(slots=True)
class TraceEntry:
    phase: str
    plugin: str
    verdict: str
    ms: float
    edits: list[Edit] = field(default_factory=list)
    error: str | None = None
    recipient: str | None = None


@dataclass
class Trace:
    """What happened to one message, hook by hook (``replay --explain`` prints it)."""

    queue_id: str = ""
    entries: list[TraceEntry] = field(default_factory=list)

    def render(self) -> str:
        lines = []
        for e in self.entries:
            who = f" [{e.recipient}]" if e.recipient else ""
            lines.append(f"{e.phase:<15} {e.plugin:<20} {e.verdict:<26} {e.ms:8.2f} ms{who}")
            if e.error:
                lines.append(f"{'':<15} error: {e.error}")
            for edit in e.edits:
                lines.append(f"{'':<15}   {edit.action} {edit.target}{' = ' + edit.detail if edit.detail else ''}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Call:
    plugin: str
    feature: str | None
    func: Callable[..., Any]
    argnames: tuple[str, ...]
    all_args: bool = False  # takes every argument of its spec: call with the caller's kwargs as is


try:  # signal.getsignal() converts to an enum through a raised ValueError: ~8 us; the C one does not
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover - other Pythons
    _getsignal = signal.getsignal

_MAIN_THREAD_ID = threading.main_thread().ident


class _Deadline:
    """Interrupts a synchronous hook that overruns (SIGALRM; main thread only).

    ``setitimer`` is a system call that costs as much as the rest of a hook call, so it is not
    made per call: a pending timer is kept as long as it fires no later than the running hook's
    deadline. When it fires, the handler looks at the hook in progress: past its deadline ->
    :class:`PluginTimeout`; not yet -> re-arm for the rest; no hook running -> nothing (and no
    timer until the next hook call). Only one synchronous hook runs at a time in a thread, so
    one deadline slot is enough, whichever chain or task is running.
    """

    call_deadline = 0.0  # perf_counter() deadline of the synchronous hook in progress; 0: none
    timer_fires_at = 0.0  # perf_counter() when our pending ITIMER_REAL fires; 0: none pending
    _handler: Any = None

    @classmethod
    def install(cls) -> bool:
        """Make sure our SIGALRM handler is in place; ``False`` outside the main thread."""
        if threading.get_ident() != _MAIN_THREAD_ID:
            return False
        if cls._handler is None or _getsignal(signal.SIGALRM) is not cls._handler:
            previous = signal.getsignal(signal.SIGALRM)

            def handler(signum: int, frame: Any) -> None:
                cls.timer_fires_at = 0.0
                deadline = cls.call_deadline
                if deadline:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0.001:
                        cls.call_deadline = 0.0
                        raise PluginTimeout()
                    cls.arm(remaining)
                elif callable(previous):
                    previous(signum, frame)

            signal.signal(signal.SIGALRM, handler)
            if cls._handler is None:
                # A timer left pending past the last hook would fire after the interpreter has
                # restored SIGALRM's default action at exit and kill the process (exit 142).
                atexit.register(cls.disarm)
            cls._handler = handler
            cls.timer_fires_at = 0.0  # whatever timer was pending is not known to be ours
        return True

    @classmethod
    def disarm(cls) -> None:
        """Cancel a pending timer (at exit, so a leftover SIGALRM never ends the process)."""
        if cls.timer_fires_at and threading.get_ident() == _MAIN_THREAD_ID:
            signal.setitimer(signal.ITIMER_REAL, 0)
            cls.timer_fires_at = 0.0

    @classmethod
    def arm(cls, seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        cls.timer_fires_at = time.perf_counter() + seconds

    @classmethod
    def enter(cls, start: float, timeout: float) -> None:
        """A synchronous hook starts now (``start``) and may run ``timeout`` seconds."""
        deadline = start + timeout
        cls.call_deadline = deadline
        fires = cls.timer_fires_at
        if not fires or fires > deadline:
            cls.arm(timeout)


class Chain:
    """Runs phases over a :class:`PluginSet`."""

    def __init__(self, plugins: PluginSet, timeout: float | None = None) -> None:
        self.plugins = plugins
        self.features = plugins.features  # the switch registry of these plugins
        self.timeout = timeout if timeout is not None else plugins.config.chain.timeout
        self._calls: dict[str, list[_Call]] = {}
        self._nargs: dict[str, int] = {}  # how many arguments each phase's spec has
        for phase in ALL_PHASES:
            self._calls[phase] = self._bind(phase)

    def _bind(self, phase: str) -> list[_Call]:
        caller = getattr(self.plugins.pm.hook, phase)
        impls = {impl.plugin_name: impl for impl in caller.get_hookimpls()}
        spec_args = set(caller.spec.argnames) if caller.spec is not None else set()
        self._nargs[phase] = len(spec_args)
        calls = []
        for p in self.plugins.order(phase):
            impl = impls[p.name]
            argnames = tuple(impl.argnames)
            calls.append(_Call(p.name, p.feature, impl.function, argnames, set(argnames) == spec_args))
        return calls

    def calls(self, phase: str) -> list[_Call]:
        return self._calls.get(phase, [])

    async def run(
        self,
        phase: str,
        *,
        features: Mapping[str, bool] | None = None,
        trace: Trace | None = None,
        **kwargs: Any,
    ) -> Verdict | None:
        """Run ``phase``; return the first verdict, or ``None`` when every plugin continued."""
        ctx = kwargs.get("ctx")
        if features is None and ctx is not None:
            features = ctx.features
        message = ctx.message if ctx is not None else None
        queue_id = ctx.queue_id if ctx is not None else (trace.queue_id if trace else "")
        recipient = ctx.recipient if ctx is not None else None
        calls = self._calls.get(phase, ())
        if not calls:
            return None
        alarm = _Deadline.install()
        timeout = self.timeout
        exact = len(kwargs) == self._nargs[phase]  # the caller passed the spec's arguments, no more
        for call in calls:
            feature = call.feature
            if feature is not None and features is not None and not features.get(feature, False):
                if trace is not None:
                    trace.entries.append(
                        TraceEntry(phase, call.plugin, f"skipped ({feature} off)", 0.0, recipient=recipient)
                    )
                continue
            n_edits = len(message.edits) if message is not None else 0
            error: str | None = None
            token = current_actor.set(call.plugin)
            start = time.perf_counter()
            try:
                args = kwargs if exact and call.all_args else {k: kwargs[k] for k in call.argnames}
                if alarm:  # a synchronous hook is interrupted by SIGALRM when it overruns
                    deadline = start + timeout  # (_Deadline.enter, inlined: this is the hot path)
                    _Deadline.call_deadline = deadline
                    fires = _Deadline.timer_fires_at
                    if not fires or fires > deadline:
                        _Deadline.arm(timeout)
                    try:
                        result = call.func(**args)
                    finally:
                        _Deadline.call_deadline = 0.0
                else:  # no signal can interrupt it here
                    result = call.func(**args)
                # an overrun is a timeout even if the hook got past the signal (or there was none)
                if time.perf_counter() - start > timeout and not inspect.isawaitable(result):
                    raise PluginTimeout()
                if result is not None:
                    if inspect.isawaitable(result):
                        # awaited in this task under a deadline, as wait_for would but without a
                        # task of its own (and the loop iteration that starts it) per async hook
                        async with asyncio.timeout(timeout):
                            result = await result
                    if result is not None and not isinstance(result, Verdict):
                        raise TypeError(f"hook returned {type(result).__name__}, not a verdict or None")
            except (PluginTimeout, TimeoutError):
                error = f"timed out after {timeout:g} s"
                result = PLUGIN_FAILURE
            except Exception as exc:  # fail closed: any plugin error is a temporary failure
                error = f"{type(exc).__name__}: {exc}"
                result = PLUGIN_FAILURE
            finally:
                current_actor.reset(token)
            if error:
                log.error("queue_id=%s plugin=%s phase=%s failed closed: %s", queue_id or "-", call.plugin, phase, error)
            if trace is not None:
                ms = (time.perf_counter() - start) * 1000
                edits = message.edits[n_edits:] if message is not None else []
                name = "continue" if result is None else verdict_name(result)
                trace.entries.append(TraceEntry(phase, call.plugin, name, ms, edits, error, recipient))
            if result is not None:
                return result
        return None

    async def emit(self, event: Event) -> None:
        """Deliver an event to every ``on_event`` hook; errors are logged, never raised."""
        calls = self._calls.get("on_event", ())
        alarm = _Deadline.install() if calls else False
        for call in calls:
            token = current_actor.set(call.plugin)
            try:
                if alarm:  # a synchronous event hook gets the same deadline as any other hook
                    _Deadline.enter(time.perf_counter(), self.timeout)
                    try:
                        result = call.func(event=event)
                    finally:
                        _Deadline.call_deadline = 0.0
                else:
                    result = call.func(event=event)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, self.timeout)
            except (PluginTimeout, TimeoutError):
                log.error("plugin=%s on_event(%s) timed out after %g s", call.plugin, event.type, self.timeout)
            except Exception as exc:
                log.error("plugin=%s on_event(%s) failed: %s", call.plugin, event.type, exc)
            finally:
                current_actor.reset(token)
