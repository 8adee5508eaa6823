"""bounce_tracking: the envelope sender of each recipient copy becomes a VERP address
``bounces+{token}@{bounce_domain}`` (feature ``trackbounces``), so a bounce names its copy.

The token is signed with the tracking keys (kind ``b``) and carries only the queue id and a
hash of the recipient, so the local part fits RFC 5321's 64 characters
(``pipeline.toolkit.verp_local_part``): the recipient, campaign, letter id and credential are
looked up from the report and the event store when the bounce arrives. The gateway accepts mail for the bounce domain and turns DSNs and
ARF reports into ``bounced`` / ``complained`` events (``pipeline.events.inbound``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import field_validator

from pipeline import MessageContext, Plugin, PluginConfig, PluginEnv, Reject, TempFail, Verdict, hookimpl
from pipeline.toolkit import verp_local_part

_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$|^localhost$")


class BounceTracking(Plugin):
    """Per recipient copy: MAIL FROM := bounces+token@bounce_domain."""

    name = "bounce_tracking"
    feature = "trackbounces"
    feature_default = False
    verp_sender = True  # bounces to our VERP address become events, not notices to the sender
    version = "1.0"

    class Config(PluginConfig):
        prefix: str = "bounces"

        @field_validator("prefix")
        @classmethod
        def _prefix(cls, v: str) -> str:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", v):
                raise ValueError("prefix must be 1-20 letters, digits, '_' or '-'")
            return v

    def __init__(self, config: Any, env: PluginEnv) -> None:
        super().__init__(config, env)
        self.domain = env.bounce_domain
        if self.domain is not None and not _DOMAIN.match(self.domain):
            raise ValueError(f"tracking.bounce_domain {self.domain!r} is not a domain name")
        if self.domain is None and env.features.get(self.feature):
            raise ValueError("features.trackbounces is on but tracking.bounce_domain is not set")
        self.signer = env.signer
        verp_local_part(self.signer, config.prefix, "b", "Q" * 16, "probe@example.com")  # fits 64? else config error

    def address(self, ctx: MessageContext) -> str:
        local = verp_local_part(self.signer, self.config.prefix, "b", ctx.queue_id, ctx.recipient or "")
        return f"{local}@{self.domain}"

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Verdict | None:
        """Decided at DATA: tracking asked for (by a header or the credential) but impossible here.

        Refused with a 5xx rather than accepted and then held: a 250 must mean the message can
        be processed, and sending it untracked would ignore what the client asked for.
        """
        if self.domain is None and ctx.message.mail_from:
            self.log.info("queue_id=%s refused: trackbounces requested but tracking.bounce_domain is not set",
                          ctx.queue_id)
            return Reject(554, "5.3.5", "Bounce tracking is not configured on this gateway (no bounce domain)")
        return None

    @hookimpl
    def on_personalize(self, ctx: MessageContext) -> Verdict | None:
        if not ctx.message.mail_from:
            return None  # a null sender (a bounce we relay) must stay null: bounces never bounce
        if self.domain is None:
            # Refused at DATA (on_message); only a message admitted before a config change gets
            # here: hold it (and log) rather than send it untracked.
            self.log.error("trackbounces requested for %s but tracking.bounce_domain is not set", ctx.queue_id)
            return TempFail(451, "4.3.5", "Bounce tracking is not configured")
        ctx.message.change_sender(self.address(ctx))
        return None
