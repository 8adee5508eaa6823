"""The one accept step: admission chain -> inbound sinks -> spool -> ``accepted`` event.

Everything that puts a message into the spool goes through here, so "accepted" means the same
thing wherever it happens: the SMTP ingress at the end of DATA, and bounce notices, which skip
the admission chain (the gateway wrote them) but are spooled and announced the same way. Replay
runs the admission part (:func:`~pipeline.chain.admission.admit_message`) and never spools.

The step knows nothing about SMTP: it returns an :class:`Outcome` and the caller turns it into
a reply. The ``accepted`` events are returned rather than emitted, so the ingress can answer the
client first (event plugins must not delay the reply) and then call :meth:`AcceptStep.announce`.
With an :class:`~pipeline.ports.AcceptRecorder` (spool and events in one PostgreSQL database) the
events are written in the enqueue's own transaction, and announcing them only counts them, wakes
the webhook sender and runs ``on_event``: a crash between the ``250`` and the announcement loses
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.chain.admission import admit_message
from pipeline.chain.processing import trace_summary
from pipeline.chain.runner import Chain, Trace
from pipeline.config import Config
from pipeline.contract.context import Credential, Event, MessageContext, Session
from pipeline.contract.message import current_actor
from pipeline.contract.verdicts import Verdict, drops, refuses
from pipeline.ports import AcceptRecorder, EventSink, InboundHandler, Metrics, SpoolWriter

log = logging.getLogger("smtpgate.ingress.accept")

Status = Literal["queued", "refused", "discarded", "handled", "spool_failed", "inbound_failed"]


@dataclass
class Outcome:
    """What became of one message: queued (with its queue id), refused (with the verdict), etc."""

    status: Status
    verdict: Verdict | None = None
    ctx: MessageContext | None = None
    recipients: list[str] = field(default_factory=list)
    size: int = 0
    events: list[Event] = field(default_factory=list)  # to emit once the client has its reply
    recorded: bool = False  # the events were committed with the message (an AcceptRecorder's)

    @property
    def queue_id(self) -> str | None:
        return self.ctx.queue_id if self.ctx is not None else None


def event_for(kind: str, ctx: MessageContext, rcpt: str, data: dict[str, Any] | None = None) -> Event:
    """The event for one recipient copy of ``ctx`` (``accepted`` or ``discarded``)."""
    return Event(
        kind,
        queue_id=ctx.queue_id,
        recipient=rcpt,
        credential=ctx.credential.name if ctx.credential else None,
        campaign_id=ctx.campaign_id,
        letter_id=ctx.letter_id,
        tags=tuple(ctx.tags),
        metadata=ctx.metadata,
        data=dict(data or {}),
    )


MAX_LOGGED_HEADERS = 100


def message_summary(ctx: MessageContext, data: bytes, trace: Trace | None = None) -> dict[str, Any]:
    """What the message log (:mod:`pipeline.events.messages`) keeps of an accepted message: the
    envelope, who sent it how (client, TLS, listener), its headers as spooled and the admission trace
    (each plugin's verdict, time and edits). It rides on the ``accepted`` event, so the log is written
    in the same transaction as the event and never disagrees with it."""
    msg, session = ctx.message, ctx.session
    summary: dict[str, Any] = {
        "mail_from": msg.mail_from,
        "subject": msg.get("Subject"),
        "message_id": msg.get("Message-Id"),
        "size": len(data),
        "client_ip": session.peer[0] if session else None,
        "tls": bool(session and session.tls),
        "listener": session.listener if session else None,
        "helo": session.helo if session else None,
        "headers": [[h.name, h.value[:2000]] for h in msg.headers[:MAX_LOGGED_HEADERS]],
    }
    if trace is not None:
        summary["trace"] = trace_summary(trace.entries)
    return summary


async def enqueue(
    spool: SpoolWriter,
    ctx: MessageContext,
    data: bytes,
    recipients: list[str],
    *,
    event_data: dict[str, Any] | None = None,
    recorder: AcceptRecorder | None = None,
    inline: bool = False,
) -> list[Event]:
    """Make one message durable and return its ``accepted`` events (to emit once answered, or, with
    ``recorder``, already committed with the message: to announce).

    Raises what the spool raises: whoever enqueues decides what a failure means (the ingress
    answers 451, a bounce notice fails like the results it belongs to). ``inline``: the caller is
    alone on its event loop (:meth:`~pipeline.ports.SpoolWriter.enqueue`).
    """
    event_data = {**(event_data or {})}
    if "message" not in event_data:  # (not setdefault: that would build the summary every time)
        event_data["message"] = message_summary(ctx, data)
    events = [event_for("accepted", ctx, rcpt, event_data) for rcpt in recipients]
    if recorder is not None:
        await recorder.enqueue(ctx, data, recipients, events, inline=inline)
    else:
        await spool.enqueue(ctx, data, recipients, inline=inline)
    return events


def _session_id(ctx: MessageContext) -> str:
    return ctx.session.session_id if ctx.session is not None else "-"


def _domain(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


class AcceptStep:
    """Admission, inbound sinks, spool and the ``accepted`` event, behind typed ports."""

    def __init__(
        self,
        config: Config,
        chain: Chain,
        spool: SpoolWriter,
        events: EventSink,
        *,
        inbound: Mapping[str, InboundHandler] | None = None,
        metrics: Metrics | None = None,
        recorder: AcceptRecorder | None = None,
        alone: Callable[[], bool] | None = None,
    ) -> None:
        """``alone()``: whether the caller (the SMTP ingress) has one session open, nobody else
        waiting on the event loop; its enqueues are then committed on the loop's thread when the
        store can (issue 17: at one session the writer thread's two hops were a fifth of the cycle;
        with more sessions its group commit serves them better)."""
        self.config = config
        self.chain = chain
        self.spool = spool
        self.events = events
        self.recorder = recorder  # message and accepted events in one transaction (shared PostgreSQL)
        # kept by reference: the composition root may register a domain after the step is built
        self.inbound: Mapping[str, InboundHandler] = inbound if inbound is not None else {}
        self.metrics = metrics
        self.alone = alone

    def inbound_handler(self, domain: str) -> InboundHandler | None:
        """The sink for mail to ``domain`` that the gateway receives itself (e.g. the bounce domain)."""
        if not self.inbound:
            return None
        domain = domain.lower().rstrip(".")
        handler = self.inbound.get(domain)
        if handler is None:
            for name, candidate in self.inbound.items():
                if name.lower().rstrip(".") == domain:
                    return candidate
        return handler

    def _count(self, outcome: Outcome) -> Outcome:
        if self.metrics is not None:
            self.metrics[f"accept_total:{outcome.status}"] += 1
        return outcome

    async def accept(
        self,
        raw: bytes,
        mail_from: str,
        rcpt_tos: Sequence[str],
        *,
        session: Session | None = None,
        credential: Credential | None = None,
        queue_id: str | None = None,
        inbound: bool = False,
    ) -> Outcome:
        """Take one message: hand it to its inbound sink, or admit it and make it durable.

        ``inbound``: the recipients are the gateway's own domains (decided at RCPT); such mail
        goes to its handler and never through the chain or the spool.
        """
        if inbound:
            return self._count(await self._to_inbound(raw, mail_from, rcpt_tos))
        trace = Trace()
        verdict, ctx = await admit_message(
            self.chain,
            raw,
            mail_from,
            list(rcpt_tos),
            session=session,
            credential=credential,
            queue_id=queue_id,
            trace=trace,
        )
        if refuses(verdict) or ctx is None:
            return self._count(Outcome("refused", verdict=verdict, ctx=ctx))
        if drops(verdict):
            log.info(
                "queue_id=%s session=%s discarded by the chain: %s",
                ctx.queue_id,
                _session_id(ctx),
                verdict.reason,
            )
            for rcpt in ctx.message.rcpt_tos:
                await self.events.emit(event_for("discarded", ctx, rcpt, {"reason": verdict.reason}))
            return self._count(Outcome("discarded", verdict=verdict, ctx=ctx))
        if self.config.relay.sink_addresses:
            await self._drop_sink_addresses(ctx)
        recipients = ctx.message.rcpt_tos
        if not recipients:
            return self._count(Outcome("discarded", verdict=verdict, ctx=ctx))
        data = ctx.message.as_bytes()
        outcome = await self.enqueue(
            ctx, data, recipients, event_data={"message": message_summary(ctx, data, trace)}
        )
        return self._count(outcome)

    async def enqueue(
        self,
        ctx: MessageContext,
        data: bytes,
        recipients: list[str],
        *,
        event_data: dict[str, Any] | None = None,
    ) -> Outcome:
        """Spool ``data`` durably, then the ``accepted`` events (returned, not yet emitted).

        A spool error is an outcome, not an exception: nothing was claimed, and the SMTP client
        keeps the message and retries.
        """
        try:
            events = await enqueue(self.spool, ctx, data, recipients, event_data=event_data, recorder=self.recorder,
                                   inline=self.alone is not None and self.alone())
        except Exception as exc:
            log.error(
                "session=%s message from=<%s> not queued: spool error %s: %s",
                _session_id(ctx),
                ctx.message.mail_from,
                type(exc).__name__,
                exc,
            )
            return Outcome("spool_failed", ctx=ctx, recipients=recipients, size=len(data))
        return Outcome("queued", ctx=ctx, recipients=list(recipients), size=len(data), events=events,
                       recorded=self.recorder is not None)

    async def announce(self, outcome: Outcome) -> None:
        """Emit the outcome's ``accepted`` events (after the client has been answered); events already
        committed with the message are only announced (counted, webhooks woken, ``on_event``)."""
        events, outcome.events = outcome.events, []
        for event in events:
            if outcome.recorded and self.recorder is not None:
                try:
                    await self.recorder.committed(event)
                except Exception:  # committed already: an on_event plugin's failure must not undo it
                    log.exception("%s: on_event for accepted of %s failed", event.queue_id, event.recipient)
            else:
                await self.events.emit(event)

    async def _drop_sink_addresses(self, ctx: MessageContext) -> None:
        """``[relay] sink_addresses``: accepted, recorded as discarded, never delivered."""
        sinks = {a.lower() for a in self.config.relay.sink_addresses}
        dropped = [r for r in ctx.message.rcpt_tos if r.lower() in sinks]
        if not dropped:
            return
        token = current_actor.set("ingress")
        try:
            for rcpt in dropped:
                ctx.message.remove_recipient(rcpt)
        finally:
            current_actor.reset(token)
        for rcpt in dropped:
            log.info(
                "queue_id=%s session=%s sink address %s: accepted and dropped",
                ctx.queue_id,
                _session_id(ctx),
                rcpt,
            )
            await self.events.emit(event_for("discarded", ctx, rcpt, {"reason": "sink address"}))

    async def _to_inbound(self, raw: bytes, mail_from: str, rcpt_tos: Sequence[str]) -> Outcome:
        """Mail for a domain the gateway receives itself (bounces): straight to its handler."""
        by_handler: dict[Any, list[str]] = {}
        for rcpt in rcpt_tos:
            by_handler.setdefault(self.inbound_handler(_domain(rcpt)), []).append(rcpt)
        for handler, rcpts in by_handler.items():
            if handler is None:  # unregistered since RCPT
                return Outcome("inbound_failed", recipients=rcpts)
            try:
                await handler(mail_from, rcpts, raw)
            except Exception as exc:
                log.error("inbound handler for %s failed: %s: %s", rcpts[0], type(exc).__name__, exc)
                return Outcome("inbound_failed", recipients=rcpts)
        log.info("inbound message from=<%s> to %s handled", mail_from, ",".join(rcpt_tos))
        return Outcome("handled", recipients=list(rcpt_tos))
