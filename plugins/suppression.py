"""suppression: refuse RCPT to an address on the stoplist, with Sendsay's reply
``550 5.0.0 Email is in the account stoplist``.

The stoplist is filled by hard bounces, unsubscribes and complaints (``[suppression]`` in the
config says which, and whether per credential or global) and by ``smtpgate suppression add``.
Recipients a plugin adds at DATA (SendGrid's ``X-SMTPAPI`` ``to`` list) never passed RCPT, so
``on_message`` checks those too: a stoplisted one is dropped from the envelope, and the message
is refused when none is left. A look-up error raises, which the chain turns into ``451 4.3.0``: never a silent accept.
"""

from __future__ import annotations

from typing import Any

from pipeline import MessageContext, Plugin, PluginConfig, PluginEnv, Reject, Session, Verdict, hookimpl
from pipeline.events import STOPLIST_REPLY, open_suppression_list


class Suppression(Plugin):
    """RCPT-time stoplist check (global entries, plus the session credential's own)."""

    name = "suppression"
    version = "1.0"

    class Config(PluginConfig):
        text: str = STOPLIST_REPLY[2]  # the reply text (code 550 5.0.0 is fixed)

    def __init__(self, config: Any, env: PluginEnv) -> None:
        super().__init__(config, env)
        self.reply = Reject(STOPLIST_REPLY[0], STOPLIST_REPLY[1], config.text)
        self._list: Any = None

    def _stoplist(self) -> Any:
        # A method, not a property: pluggy inspects every attribute at registration.
        if self._list is None:  # opened on first RCPT: commands that never admit mail don't create it
            self._list = open_suppression_list(self.env.data_dir)
        return self._list

    @hookimpl
    def on_rcpt_to(self, session: Session, address: str) -> Verdict | None:
        credential = session.credential.name if session.credential else None
        if address and self._stoplist().contains(address, credential):
            return self.reply
        return None

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Verdict | None:
        added = [e.detail for e in ctx.message.edits if e.action == "add_rcpt"]
        if not added:
            return None
        credential = ctx.credential.name if ctx.credential else None
        for address in dict.fromkeys(added):
            if address in ctx.message.rcpt_tos and self._stoplist().contains(address, credential):
                ctx.message.remove_recipient(address)
        return None if ctx.message.rcpt_tos else self.reply
