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
import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.context import Event
from pipeline.hookspecs import ALL_PHASES
from pipeline.loader import PluginSet
from pipeline.message import Edit, current_actor
from pipeline.verdicts import PLUGIN_FAILURE, Verdict, verdict_name

log = logging.getLogger("smtpgate.chain")


class PluginTimeout(Exception):
    """A synchronous hook ran past its deadline."""


@dataclass
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


class _Deadline:
    """Interrupts a synchronous hook that overruns (SIGALRM; main thread only)."""

    _installed = False
    armed = False

    @classmethod
    def install(cls) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        if not cls._installed:
            previous = signal.getsignal(signal.SIGALRM)

            def handler(signum: int, frame: Any) -> None:
                if cls.armed:
                    cls.armed = False
                    raise PluginTimeout()
                if callable(previous):
                    previous(signum, frame)

            signal.signal(signal.SIGALRM, handler)
            cls._installed = True
        return True


class Chain:
    """Runs phases over a :class:`PluginSet`."""

    def __init__(self, plugins: PluginSet, timeout: float | None = None) -> None:
        self.plugins = plugins
        self.timeout = timeout if timeout is not None else plugins.config.chain.timeout
        self._calls: dict[str, list[_Call]] = {}
        for phase in ALL_PHASES:
            self._calls[phase] = self._bind(phase)

    def _bind(self, phase: str) -> list[_Call]:
        impls = {impl.plugin_name: impl for impl in getattr(self.plugins.pm.hook, phase).get_hookimpls()}
        calls = []
        for p in self.plugins.order(phase):
            impl = impls[p.name]
            calls.append(_Call(p.name, p.feature, impl.function, tuple(impl.argnames)))
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
        try:
            return await self._run(phase, calls, alarm, features, trace, message, queue_id, recipient, kwargs)
        finally:
            if alarm:  # the timer is re-armed per call and left running between calls; stop it once
                signal.setitimer(signal.ITIMER_REAL, 0)

    async def _run(
        self,
        phase: str,
        calls: list[_Call],
        alarm: bool,
        features: Mapping[str, bool] | None,
        trace: Trace | None,
        message: Any,
        queue_id: str,
        recipient: str | None,
        kwargs: dict[str, Any],
    ) -> Verdict | None:
        for call in calls:
            if call.feature is not None and features is not None and not features.get(call.feature, False):
                if trace is not None:
                    trace.entries.append(
                        TraceEntry(phase, call.plugin, f"skipped ({call.feature} off)", 0.0, recipient=recipient)
                    )
                continue
            n_edits = len(message.edits) if message is not None else 0
            args = {k: kwargs[k] for k in call.argnames}
            error: str | None = None
            token = current_actor.set(call.plugin)
            start = time.perf_counter()
            try:
                result = self._call_sync(call, args, alarm)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, self.timeout)
                if result is not None and not isinstance(result, Verdict):
                    raise TypeError(f"hook returned {type(result).__name__}, not a verdict or None")
            except (PluginTimeout, TimeoutError):
                error = f"timed out after {self.timeout:g} s"
                result = PLUGIN_FAILURE
            except Exception as exc:  # fail closed: any plugin error is a temporary failure
                error = f"{type(exc).__name__}: {exc}"
                result = PLUGIN_FAILURE
            finally:
                current_actor.reset(token)
            ms = (time.perf_counter() - start) * 1000
            if error:
                log.error("queue_id=%s plugin=%s phase=%s failed closed: %s", queue_id or "-", call.plugin, phase, error)
            if trace is not None:
                edits = message.edits[n_edits:] if message is not None else []
                trace.entries.append(TraceEntry(phase, call.plugin, verdict_name(result), ms, edits, error, recipient))
            if result is not None:
                return result
        return None

    def _call_sync(self, call: _Call, args: dict[str, Any], alarm: bool) -> Any:
        """Call the hook; a synchronous one is interrupted by SIGALRM when it overruns.

        Outside the main thread no signal can interrupt it: the overrun is detected afterwards.
        One ``setitimer`` per call (re-arming replaces the previous deadline); the flag, not a
        second syscall, makes a late tick between calls harmless.
        """
        if not alarm:
            start = time.monotonic()
            result = call.func(**args)
            if not inspect.isawaitable(result) and time.monotonic() - start > self.timeout:
                raise PluginTimeout()
            return result
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        _Deadline.armed = True
        try:
            return call.func(**args)
        finally:
            _Deadline.armed = False

    async def emit(self, event: Event) -> None:
        """Deliver an event to every ``on_event`` hook; errors are logged, never raised."""
        for call in self._calls.get("on_event", ()):
            token = current_actor.set(call.plugin)
            try:
                result = call.func(event=event)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, self.timeout)
            except Exception as exc:
                log.error("plugin=%s on_event(%s) failed: %s", call.plugin, event.type, exc)
            finally:
                current_actor.reset(token)
