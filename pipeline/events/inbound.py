"""Mail to the bounce domain: DSNs and complaints to ``bounces+{token}@{bounce_domain}`` and
mailto unsubscribes to ``unsubscribe+{token}@{bounce_domain}``.

The token (signed by the tracking keys, kind ``b`` or ``u``) says which copy (queue id and
recipient) the report is about, so nobody can suppress an address by mailing us a forged DSN:
a report without a genuine token is logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipeline.bounces import parse_report
from pipeline.context import Event
from pipeline.tokens import TokenSigner, load_signer

log = logging.getLogger("smtpgate.bounces")


class InboundHandler:
    """``gateway.inbound_handlers[bounce_domain]``: turns reports into events."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.domain = (gateway.config.tracking.bounce_domain or "").lower()
        self._signer: TokenSigner | None = None

    @property
    def signer(self) -> TokenSigner:
        if self._signer is None:
            t = self.gateway.config.tracking
            self._signer = load_signer(t.keys, t.key_id, self.gateway.config.data_dir)
        return self._signer

    async def __call__(self, mail_from: str, rcpts: list[str], data: bytes) -> None:
        """Handle one message; store failures raise (so the sender gets 4xx and retries)."""
        for rcpt in rcpts:
            local, _, domain = rcpt.strip("<>").rpartition("@")
            if domain.lower() != self.domain:
                continue
            prefix, plus, token = local.partition("+")
            payload = self.signer.verify(token) if plus else None
            kind = payload.get("k") if payload else None
            if payload is None or not payload.get("r"):
                log.warning("mail for %s from <%s>: no valid token, ignored", rcpt, mail_from)
                self.gateway.counters["inbound_total:invalid"] += 1
            elif prefix.lower() == "bounces" and kind == "b":
                await self._report(payload, data)
            elif prefix.lower() == "unsubscribe" and kind == "u":
                await self._emit("unsubscribed", payload, {"source": "mailto"})
            else:
                log.warning("mail for %s: token kind %r does not match %r, ignored", rcpt, kind, prefix)
                self.gateway.counters["inbound_total:invalid"] += 1

    async def _report(self, payload: dict[str, Any], data: bytes) -> None:
        report = await asyncio.to_thread(parse_report, data)
        if report.kind == "arf":
            fb = report.feedback
            await self._emit(
                "complained", payload,
                {"source": "arf", "feedback_type": fb.get("feedback-type", ""), "user_agent": fb.get("user-agent", "")},
            )
            return
        line = report.for_recipient(payload.get("r"))
        if line is None:
            log.info("report for queue_id=%s is not a bounce (%s), ignored", payload.get("q"), report.kind)
            self.gateway.counters["inbound_total:not_a_bounce"] += 1
            return
        data_out: dict[str, Any] = {
            "source": report.kind,
            "class": line.bounce_class,
            "status": line.status,
            "action": line.action,
        }
        if line.diagnostic:
            data_out["diagnostic"] = line.diagnostic[:500]
        if line.address:
            data_out["reported_recipient"] = line.address
        await self._emit("deferred" if line.action == "delayed" else "bounced", payload, data_out)

    async def _emit(self, type_: str, payload: dict[str, Any], data: dict[str, Any]) -> None:
        queue_id = payload.get("q")
        info: dict[str, Any] = {"credential": payload.get("s"), "campaign_id": payload.get("c"), "letter_id": payload.get("l")}
        if queue_id and not all(info.values()):
            known = await asyncio.to_thread(self.gateway.events.message_info, queue_id)
            info = {k: v or known.get(k) for k, v in info.items()}
        self.gateway.counters[f"inbound_total:{type_}"] += 1
        await self.gateway.emit(
            Event(type=type_, queue_id=queue_id, recipient=payload.get("r"), data=data, **info), strict=True
        )
