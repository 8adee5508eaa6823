"""smtpgate: a self-hosted SMTP gateway.

This module is the public API for plugin authors (the contract); :mod:`pipeline.toolkit` adds the
helpers (HTML, tokens, tracking base, VERP, stoplist reply). Built-in plugins use nothing else,
and ``docs/plugins.md`` lists every name exported here.
"""

from pipeline.contract.context import Credential, Event, MessageContext, Session, Transaction
from pipeline.contract.hookspecs import hookimpl
from pipeline.contract.message import Edit, Header, Message, MessageError, Part, SealedError
from pipeline.contract.plugin import Plugin, PluginConfig, PluginEnv, SuppressionList
from pipeline.contract.verdicts import Accept, Discard, Reject, TempFail, Verdict

__version__ = "0.1.0"

__all__ = [
    "Accept",
    "Credential",
    "Discard",
    "Edit",
    "Event",
    "Header",
    "Message",
    "MessageContext",
    "MessageError",
    "Part",
    "Plugin",
    "PluginConfig",
    "PluginEnv",
    "Reject",
    "SealedError",
    "Session",
    "SuppressionList",
    "TempFail",
    "Transaction",
    "Verdict",
    "hookimpl",
]
