"""suppression: refuse RCPT to an address on the stoplist, with Sendsay's replies:
``550 5.0.0 Email has permanent delivery errors`` when it is there for a hard bounce, else
``550 5.0.0 Email is in the account stoplist`` (unsubscribed, complaint, added by hand).

The stoplist is filled by hard bounces, unsubscribes and complaints (``[suppression]`` in the
config says which, and whether per credential or global) and by ``smtpgate suppression add``.
Recipients a plugin adds at DATA (SendGrid's ``X-SMTPAPI`` ``to`` list) never passed RCPT, so
``on_message`` checks those too: a stoplisted one is dropped from the envelope, and the message
is refused when none is left. The look-up never blocks the event loop (``env.suppression.reason_async``,
bounded in time); when it fails or is too slow the answer is ``451 4.3.0``: never a silent accept.
Failures are logged when they start and when look-ups work again, not per RCPT.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from pipeline import (
    MessageContext,
    Plugin,
    PluginConfig,
    PluginEnv,
    Reject,
    Session,
    TempFail,
    Verdict,
    hookimpl,
)
from pipeline.toolkit import HARD_BOUNCE_REPLY, STOPLIST_REPLY


class Suppression(Plugin):
    """RCPT-time stoplist check (global entries, plus the session credential's own)."""

    name = "suppression"
    version = "1.0"

    class Config(PluginConfig):
        text: str = STOPLIST_REPLY[2]  # the reply text (code 550 5.0.0 is fixed)
        hard_bounce_text: str = HARD_BOUNCE_REPLY[2]  # the text for an address that bounced hard

    def __init__(self, config: Any, env: PluginEnv) -> None:
        super().__init__(config, env)
        self.reply = Reject(STOPLIST_REPLY[0], STOPLIST_REPLY[1], config.text)
        self.hard_bounce_reply = Reject(HARD_BOUNCE_REPLY[0], HARD_BOUNCE_REPLY[1], config.hard_bounce_text)
        self.unavailable = TempFail(451, "4.3.0", "Temporary local problem, try again later")
        self.failing = False

    @hookimpl
    async def on_rcpt_to(self, session: Session, address: str) -> Verdict | None:
        credential = session.credential.name if session.credential else None
        # env.suppression is opened on first use: commands that never admit mail don't create it.
        if not address:
            return None
        try:
            reason = await self.env.suppression.reason_async(address, credential)
        except Exception as exc:
            return self._unavailable(exc)
        self._available()
        if reason is None:
            return None
        return self.hard_bounce_reply if reason == "hard bounce" else self.reply

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Awaitable[Verdict | None] | None:
        """Recipients a plugin added at DATA (SendGrid's ``to``) never went through RCPT: drop the
        stoplisted ones here; a message left with nobody is refused like a RCPT would be.

        Synchronous when no recipient was added (nearly every message): the chain then has no
        coroutine to await under a timeout; otherwise the look-ups' coroutine (awaited by the chain)."""
        added = [e.detail for e in ctx.message.edits if e.action == "add_rcpt"]
        if not added:
            return None
        return self._check_added(ctx, added)

    async def _check_added(self, ctx: MessageContext, added: list[str]) -> Verdict | None:
        credential = ctx.credential.name if ctx.credential else None
        for address in dict.fromkeys(added):
            if address not in ctx.message.rcpt_tos:
                continue
            try:
                reason = await self.env.suppression.reason_async(address, credential)
            except Exception as exc:
                return self._unavailable(exc)
            if reason is not None:
                ctx.message.remove_recipient(address)
        self._available()
        return None if ctx.message.rcpt_tos else self.reply

    def _unavailable(self, exc: Exception) -> Verdict:
        """Fail closed; logged once until look-ups work again (an outage is not a line per RCPT)."""
        if not self.failing:
            self.failing = True
            self.log.error("stoplist look-up failed (%s: %s): answering 451 4.3.0 until it works again",
                           type(exc).__name__, exc)
        return self.unavailable

    def _available(self) -> None:
        if self.failing:
            self.failing = False
            self.log.warning("stoplist look-ups work again")
