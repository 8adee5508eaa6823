"""End of message: admission, the processing chain on the whole message, edits as milter actions.

The work is a function of a picklable :class:`Delivery`, so it runs either in the milter's event
loop or in worker processes (``[milter] workers``): the chain is CPU work (CSS inlining, HTML
rewriting, signing) and one event loop uses one core.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Literal

from pipeline.chain.admission import admit_message
from pipeline.chain.loader import PluginSet
from pipeline.chain.processing import process_as_one
from pipeline.chain.runner import Chain, Trace
from pipeline.config import Config
from pipeline.contract.context import Session
from pipeline.contract.verdicts import PLUGIN_FAILURE, Discard, Reject, TempFail, Verdict
from pipeline.milter import protocol as P
from pipeline.milter.edits import EditError, envelope_actions, message_actions

log = logging.getLogger("smtpgate.milter")

FailAction = Literal["tempfail", "accept", "reject"]


@dataclass(frozen=True)
class FailPolicy:
    """What a plugin error or timeout answers (like OpenDKIM's On-InternalError): tempfail by default."""

    on_error: FailAction = "tempfail"
    on_timeout: FailAction = "tempfail"

    def action(self, trace: Trace) -> tuple[FailAction, str]:
        """The action for the plugin failure that ended ``trace``, and how to log it."""
        last = trace.entries[-1] if trace.entries else None
        timed_out = bool(last and last.error and last.error.startswith("timed out"))
        what = f"plugin {last.plugin if last else '?'} {'timed out' if timed_out else 'failed'}"
        return (self.on_timeout if timed_out else self.on_error), what

    @staticmethod
    def verdict(action: FailAction) -> Verdict | None:
        if action == "accept":
            return None
        if action == "reject":
            return Reject(550, "5.3.0", "Local problem, message refused")
        return PLUGIN_FAILURE


@dataclass
class Delivery:
    """One message at end of message, as the MTA has it."""

    queue_id: str
    mta_id: str
    fields: list[bytes]
    body: bytes
    mail_from: str
    rcpts: list[str]  # the recipients the chain sees
    discarded: list[str]  # recipients a hook discarded at RCPT: the MTA deletes them
    session: Session
    leadspc: bool
    granted: int


class EndOfMessage:
    """Runs the chain on a :class:`Delivery` and answers with the milter packets for the MTA."""

    def __init__(self, chain: Chain, config: Config, policy: FailPolicy) -> None:
        self.chain = chain
        self.config = config
        self.policy = policy

    async def run(self, d: Delivery) -> list[bytes]:
        raw = (b"\r\n".join(d.fields) + b"\r\n\r\n" if d.fields else b"\r\n") + d.body
        trace = Trace()
        try:
            verdict, ctx = await admit_message(
                self.chain,
                raw,
                d.mail_from,
                list(d.rcpts),
                session=d.session,
                credential=d.session.credential,
                queue_id=d.queue_id,
                trace=trace,
            )
            if verdict is PLUGIN_FAILURE:
                return self.failed(d, trace)
            if ctx is not None and not isinstance(verdict, Reject | TempFail | Discard):
                ctx.notes["mta_queue_id"] = d.mta_id
                verdict = await process_as_one(self.chain, ctx, trace)
                if verdict is PLUGIN_FAILURE:
                    return self.failed(d, trace)
            if ctx is None or isinstance(verdict, Reject | TempFail | Discard):
                return final(verdict, d)
            actions = message_actions(
                d.fields,
                d.body,
                d.mail_from,
                d.rcpts + d.discarded,
                ctx.message.as_bytes(),
                ctx.message.mail_from or "",
                ctx.message.rcpt_tos,
                leadspc=d.leadspc,
                granted=d.granted,
            )
        except EditError as exc:
            log.error("milter queue_id=%s mta_queue_id=%s: %s", d.queue_id, d.mta_id, exc)
            return fallback(self.policy, d)
        except Exception as exc:  # our own bug must not pass the message through unsigned
            log.exception(
                "milter queue_id=%s mta_queue_id=%s end of message failed: %s", d.queue_id, d.mta_id, exc
            )
            return fallback(self.policy, d)
        log.info(
            "milter queue_id=%s mta_queue_id=%s accepted from=<%s> rcpts=%d actions=%d%s",
            d.queue_id,
            d.mta_id,
            d.mail_from,
            len(d.rcpts),
            len(actions),
            f" recipient={ctx.recipient}" if ctx.recipient else " per-message",
        )
        return [*actions, P.CONTINUE]

    def failed(self, d: Delivery, trace: Trace) -> list[bytes]:
        action, what = self.policy.action(trace)
        log.error(
            "milter queue_id=%s mta_queue_id=%s: %s: %s per the fail policy",
            d.queue_id,
            d.mta_id,
            what,
            action,
        )
        verdict = self.policy.verdict(action)
        return unmodified(d) if verdict is None else final(verdict, d)


def final(verdict: Verdict | None, d: Delivery) -> list[bytes]:
    if isinstance(verdict, Discard):
        log.info(
            "milter queue_id=%s mta_queue_id=%s discarded by the chain: %s",
            d.queue_id,
            d.mta_id,
            verdict.reason,
        )
        return [P.DISCARD]
    reply = verdict.reply() if isinstance(verdict, Reject | TempFail) else PLUGIN_FAILURE.reply()
    log.info("milter queue_id=%s mta_queue_id=%s refused: %s", d.queue_id, d.mta_id, reply)
    return [P.replycode(reply)]


def fallback(policy: FailPolicy, d: Delivery) -> list[bytes]:
    """Our own failure at end of message answers what ``on_error`` says."""
    verdict = policy.verdict(policy.on_error)
    return unmodified(d) if verdict is None else final(verdict, d)


def unmodified(d: Delivery) -> list[bytes]:
    """Fail open (configured): the message goes on as the MTA has it, only RCPT-time discards applied."""
    log.warning(
        "milter queue_id=%s mta_queue_id=%s passed through UNMODIFIED (fail policy accept): "
        "not tracked, not signed",
        d.queue_id,
        d.mta_id,
    )
    actions = (
        envelope_actions(d.mail_from, d.rcpts + d.discarded, d.mail_from, d.rcpts)
        if d.granted & P.F_DELRCPT
        else []
    )
    return [*actions, P.ACCEPT]


# -- worker processes ---------------------------------------------------------------------------

_WORKER: EndOfMessage | None = None


def _init_worker(config: Config, policy: FailPolicy, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    global _WORKER
    _WORKER = EndOfMessage(Chain(PluginSet(config)), config, policy)


def _ready() -> bool:
    return _WORKER is not None


def _run_in_worker(d: Delivery) -> list[bytes]:
    assert _WORKER is not None
    return asyncio.run(_WORKER.run(d))


class WorkerPool:
    """End of message in ``workers`` processes (spawned: no state of the event loop is inherited)."""

    def __init__(self, config: Config, policy: FailPolicy, workers: int) -> None:
        self.config, self.policy, self.workers = config, policy, workers
        self.pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.config, self.policy, logging.getLogger().getEffectiveLevel()),
        )

    async def start(self) -> None:
        """Start every worker now (each loads the chain: seconds), not on the first message."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, _ready) for _ in range(self.workers)))

    async def run(self, d: Delivery) -> list[bytes]:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, _run_in_worker, d)
        except (
            BrokenProcessPool
        ):  # a worker died (killed, out of memory): this message fails, the next gets a new pool
            log.error(
                "milter queue_id=%s mta_queue_id=%s: a worker process died: new workers", d.queue_id, d.mta_id
            )
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new()
            return fallback(self.policy, d)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
