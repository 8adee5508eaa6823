"""Mail to the bounce domain: DSNs and complaints to ``bounces+{token}@{bounce_domain}`` and
mailto unsubscribes to ``unsub+{token}@{bounce_domain}`` (tokens: :mod:`pipeline.toolkit.verp`).

The token (signed by the tracking keys, kind ``b`` or ``u``) names the queue id and a hash of
the recipient, so nobody can suppress an address by mailing us a forged DSN: a report without
a genuine token, or whose recipient can't be matched to the hash, is logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipeline.config import Config
from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.events.bounces import parse_report
from pipeline.ports import EventSink, EventStore, Metrics
from pipeline.toolkit.tokens import TokenSigner, load_signer
from pipeline.toolkit.verp import VerpToken, parse_verp

log = logging.getLogger("smtpgate.bounces")


class InboundHandler:
    """The handler of mail to ``[tracking] bounce_domain``: turns reports into events.

    Ports: the event store (which recipients a queue id had, its campaign), the event sink the
    results go to, and the counters.
    """

    def __init__(self, config: Config, store: EventStore, events: EventSink, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.events = events
        self.metrics = metrics
        self.domain = (config.tracking.bounce_domain or "").lower()
        self._signer: TokenSigner | None = None

    def signer(self) -> TokenSigner:
        if self._signer is None:
            t = self.config.tracking
            self._signer = load_signer(t.keys, t.key_id, self.config.data_dir, self.config.storage.url)
        return self._signer

    async def __call__(self, mail_from: str, rcpts: list[str], data: bytes) -> None:
        """Handle one message; store failures raise (so the sender gets 4xx and retries)."""
        for rcpt in rcpts:
            local, _, domain = rcpt.strip("<>").rpartition("@")
            if domain.lower().rstrip(".") != self.domain:
                continue
            token = parse_verp(self.signer(), local)
            if token is None:
                log.warning("mail for %s from <%s>: no valid token, ignored", rcpt, mail_from)
                self.metrics["inbound_total:invalid"] += 1
            elif token.kind == "b":
                await self._report(token, data)
            else:
                await self._unsubscribe(token, mail_from)

    async def _known(self, token: VerpToken) -> list[str]:
        return await asyncio.to_thread(self.store.recipients_of, token.queue_id)

    async def _report(self, token: VerpToken, data: bytes) -> None:
        report = await asyncio.to_thread(parse_report, data)
        if report.kind == "arf":
            fb = report.feedback
            rcpt = token.match([fb.get("original-rcpt-to"), fb.get("removal-recipient")]) or token.match(
                await self._known(token)
            )
            await self._emit(EventType.COMPLAINED, token, rcpt, {
                "source": "arf", "feedback_type": fb.get("feedback-type", ""), "user_agent": fb.get("user-agent", ""),
            })
            return
        reported = [r.address for r in report.recipients]
        rcpt = token.match(reported) or token.match(await self._known(token))
        line = report.for_recipient(rcpt)
        if line is None:
            log.info("report for queue_id=%s is not a bounce (%s), ignored", token.queue_id, report.kind)
            self.metrics["inbound_total:not_a_bounce"] += 1
            return
        data_out: dict[str, Any] = {"source": report.kind, "class": line.bounce_class, "status": line.status,
                                    "action": line.action}
        if line.diagnostic:
            data_out["diagnostic"] = line.diagnostic[:500]
        if line.address:
            data_out["reported_recipient"] = line.address
        await self._emit(EventType.DEFERRED if line.action == "delayed" else EventType.BOUNCED, token, rcpt, data_out)

    async def _unsubscribe(self, token: VerpToken, mail_from: str) -> None:
        rcpt = token.match(await self._known(token)) or token.match([mail_from])
        await self._emit(EventType.UNSUBSCRIBED, token, rcpt, {"source": "mailto"})

    async def _emit(self, type_: EventType, token: VerpToken, rcpt: str | None, data: dict[str, Any]) -> None:
        if rcpt is None:
            log.warning("%s for queue_id=%s: recipient not identified, ignored", type_, token.queue_id)
            self.metrics["inbound_total:unmatched"] += 1
            return
        info = await asyncio.to_thread(self.store.message_info, token.queue_id)
        self.metrics[f"inbound_total:{type_}"] += 1
        event = Event(type=type_, queue_id=token.queue_id, recipient=rcpt, data=data, credential=info.get("credential"),
                      campaign_id=info.get("campaign_id"), letter_id=info.get("letter_id"))
        await self.events.emit(event, strict=True)
