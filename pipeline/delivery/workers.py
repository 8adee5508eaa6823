"""Processing workers: the processing phases (transform, fan-out, personalize, sign) in separate
processes, so CSS inlining, HTML rewriting and RSA signing use every core (the GIL rules out threads).

Each worker process builds the plugin chain once from the config and the plugin set
(initializer) and then turns ``(context record, raw bytes, envelope)`` into per-recipient
copies. Delivery stays in the main process's event loop. ``workers = 0`` runs the chain in the
main process (debugging, small tests).

Workers never outlive the gateway (:mod:`pipeline.delivery.lifeline`): they die with the
forkserver, which dies with the main process, however that ends (SIGTERM to the group, SIGKILL).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

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

_worker: tuple[Chain, asyncio.AbstractEventLoop] | None = None


def build_chain(config: Config, extra_plugins: list[Any]) -> Chain:
    """The processing chain of a worker: the same plugins, in the same order, as the gateway's."""
    return Chain(PluginSet(config, extra_plugins))


def _init_worker(
    config: Config, extra_plugins: list[Any], gateway_pid: int, log_settings: tuple[int, str] = (logging.INFO, "text")
) -> None:
    """Runs once per worker process: log like the gateway, tie its life to the gateway's, then build the chain."""
    global _worker
    setup_logging(*log_settings)  # a forkserver child starts with logging unconfigured
    # The parent decides when to stop (SIGTERM/Ctrl-C reach the whole process group); a worker
    # killed mid-message would turn a clean shutdown into a retry. Ignoring them is safe only
    # because the worker exits by itself once the gateway is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(gateway_pid)
    _worker = (build_chain(config, extra_plugins), asyncio.new_event_loop())
    log.info("worker ready: %d plugins in the chain", len(_worker[0].plugins.plugins))


def _ping() -> bool:
    return _worker is not None


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


def _process_in_worker(
    record: dict[str, Any], data: bytes, mail_from: str, recipients: list[str]
) -> tuple[list[CopyResult], Timings]:
    if _worker is None:
        raise RuntimeError("worker process was not initialised")
    chain, loop = _worker
    timings: Timings = []
    return loop.run_until_complete(run_processing(chain, record, data, mail_from, recipients, timings)), timings


class WorkerPool:
    """N worker processes (forkserver), rebuilt if one dies; or the main process when N is 0."""

    def __init__(self, config: Config, workers: int, chain: Chain, extra_plugins: list[Any] | None = None) -> None:
        self.config = config
        self.workers = workers
        self.chain = chain
        self.extra_plugins = list(extra_plugins or [])
        self._executor: ProcessPoolExecutor | None = None
        self.metrics: LatencyMetrics | None = None  # where the plugin latencies the processes measure go

    def _new_executor(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("forkserver")
        start_forkserver()
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(self.config, self.extra_plugins, os.getpid(), current_settings()),
        )

    async def start(self) -> None:
        """Start the processes and wait until each has built its chain (start-up errors show here)."""
        if self.workers == 0:
            return
        self._executor = self._new_executor()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _ping) for _ in range(self.workers)))

    async def process(
        self, record: dict[str, Any], data: bytes, mail_from: str, recipients: list[str]
    ) -> list[CopyResult]:
        """Copies for ``recipients``; raises if the worker failed (the caller defers the message)."""
        timings: Timings = []
        if self.workers == 0 or self._executor is None:
            copies = await run_processing(self.chain, record, data, mail_from, recipients, timings)
            self._observe(timings)
            return copies
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            copies, timings = await loop.run_in_executor(
                executor, _process_in_worker, record, data, mail_from, recipients)
            self._observe(timings)
            return copies
        except BrokenProcessPool:
            if self._executor is executor:
                log.error("a worker process died; starting a new pool")
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
            raise

    def _observe(self, timings: Timings) -> None:
        if self.metrics is not None:
            for phase, plugin, seconds in timings:
                self.metrics.observe("plugin_latency_seconds", seconds, phase=phase, plugin=plugin)

    async def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
