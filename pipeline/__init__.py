"""smtpgate: a self-hosted SMTP gateway.

This module is the public API for plugin authors; built-in plugins use nothing else.
"""

from pipeline.contract.context import Credential, Event, MessageContext, Session, Transaction
from pipeline.contract.hookspecs import hookimpl
from pipeline.contract.message import Edit, Message, MessageError, Part
from pipeline.contract.plugin import Plugin, PluginConfig, PluginEnv
from pipeline.contract.verdicts import Accept, Discard, Reject, TempFail, Verdict

__version__ = "0.1.0"

__all__ = [
    "Accept",
    "Credential",
    "Discard",
    "Edit",
    "Event",
    "Message",
    "MessageContext",
    "MessageError",
    "Part",
    "Plugin",
    "PluginConfig",
    "PluginEnv",
    "Reject",
    "Session",
    "TempFail",
    "Transaction",
    "Verdict",
    "hookimpl",
]
