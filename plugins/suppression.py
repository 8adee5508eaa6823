"""suppression: refuse RCPT to an address on the stoplist, with Sendsay's reply
``550 5.0.0 Email is in the account stoplist``.

The stoplist is filled by hard bounces, unsubscribes and complaints (``[suppression]`` in the
config says which, and whether per credential or global) and by ``smtpgate suppression add``.
A look-up error raises, which the chain turns into ``451 4.3.0``: never a silent accept.
"""

from __future__ import annotations

from typing import Any

from pipeline import Plugin, PluginConfig, PluginEnv, Reject, Session, Verdict, hookimpl
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
