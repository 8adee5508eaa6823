"""suppression: refuse RCPT to an address on the stoplist, with Sendsay's reply
``550 5.0.0 Email is in the account stoplist``.

The stoplist is filled by hard bounces, unsubscribes and complaints (``[suppression]`` in the
config says which, and whether per credential or global) and by ``smtpgate suppression add``.
A look-up error raises, which the chain turns into ``451 4.3.0``: never a silent accept.
"""

from __future__ import annotations

from typing import Any

from pipeline import Plugin, PluginConfig, PluginEnv, Reject, Session, Verdict, hookimpl
from pipeline.toolkit import STOPLIST_REPLY


class Suppression(Plugin):
    """RCPT-time stoplist check (global entries, plus the session credential's own)."""

    name = "suppression"
    version = "1.0"

    class Config(PluginConfig):
        text: str = STOPLIST_REPLY[2]  # the reply text (code 550 5.0.0 is fixed)

    def __init__(self, config: Any, env: PluginEnv) -> None:
        super().__init__(config, env)
        self.reply = Reject(STOPLIST_REPLY[0], STOPLIST_REPLY[1], config.text)

    @hookimpl
    def on_rcpt_to(self, session: Session, address: str) -> Verdict | None:
        credential = session.credential.name if session.credential else None
        # env.suppression is opened on first use: commands that never admit mail don't create it.
        if address and self.env.suppression.contains(address, credential):
            return self.reply
        return None
