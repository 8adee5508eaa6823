"""The stoplist's reply, shared by the RCPT-time check and the events that fill the list.

The list itself reaches a plugin as a port, ``env.suppression``
(:class:`pipeline.contract.plugin.SuppressionList`); the reply is a fact of the dialect the
gateway speaks, so it is here rather than in the event store.
"""

from __future__ import annotations

STOPLIST_REPLY = (550, "5.0.0", "Email is in the account stoplist")
"""Sendsay's reply to a RCPT for a suppressed address: (code, enhanced code, text)."""

HARD_BOUNCE_REPLY = (550, "5.0.0", "Email has permanent delivery errors")
"""Sendsay's reply to a RCPT for an address suppressed because it bounced hard."""
