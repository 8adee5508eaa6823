"""list_unsubscribe: per recipient copy, ``List-Unsubscribe: <{base_url}/u/{token}>`` (RFC 2369)
and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058), where the feature switch
``listunsubscribe`` is on: off by default, switched on per credential (``features =
{ listunsubscribe = true }``) or for everyone (``[features] listunsubscribe = true``).

With ``mailto = true`` (and ``[tracking] bounce_domain`` set) the header also offers
``<mailto:unsub+{token}@{bounce_domain}>`` (a compact token, see ``pipeline.toolkit.verp``), which the gateway's bounce-domain handler
turns into an ``unsubscribed`` event. A sender's own List-Unsubscribe is kept unless
``replace = true``. Runs before the signer, so DKIM signs both fields.
"""

from __future__ import annotations

from typing import Any

from pipeline import MessageContext, PluginEnv, Verdict, hookimpl
from pipeline.toolkit import TrackingPlugin, copy_payload, verp_local_part


class ListUnsubscribe(TrackingPlugin):
    """One-click unsubscribe headers with a signed per-recipient token."""

    name = "list_unsubscribe"
    feature = "listunsubscribe"
    feature_default = False
    feature_by_header = False  # policy: the config and the credential decide, never a message header
    version = "1.1"

    class Config(TrackingPlugin.Config):
        mailto: bool = False
        replace: bool = False

    def __init__(self, config: Any, env: PluginEnv) -> None:
        super().__init__(config, env)
        if not self.base_url.lower().startswith("https://"):
            self.log.debug("List-Unsubscribe base URL is not https (%s); Gmail and Yahoo expect https", self.base_url)
        self.domain = env.bounce_domain
        if config.mailto and not self.domain:
            raise ValueError("mailto = true needs [tracking] bounce_domain (the address that receives it)")

    def header_value(self, ctx: MessageContext) -> str:
        token = self.signer.sign(copy_payload("u", ctx))
        value = f"<{self.base_url}/u/{token}>"
        if self.config.mailto:
            local = verp_local_part(self.signer, "unsub", "u", ctx.queue_id, ctx.recipient or "")
            value += f", <mailto:{local}@{self.domain}?subject=unsubscribe>"
        return value

    @hookimpl
    def on_personalize(self, ctx: MessageContext) -> Verdict | None:
        if not ctx.recipient:
            return None
        message = ctx.message
        if "List-Unsubscribe" in message:
            if not self.config.replace:
                return None
            message.remove_header("List-Unsubscribe")
            message.remove_header("List-Unsubscribe-Post")
        message.add_header("List-Unsubscribe", self.header_value(ctx))
        message.add_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        return None
