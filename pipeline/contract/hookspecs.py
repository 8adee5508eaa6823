"""Every hook a plugin may implement, grouped by phase, in the order a message meets them.

Each admission hook runs inside the SMTP session and returns ``None`` (continue) or a verdict
(:class:`~pipeline.contract.verdicts.Accept`, ``Reject``, ``TempFail``, ``Discard``), which becomes the
SMTP reply. Processing hooks run after the spool in worker processes; their verdicts decide the
copy's fate (``TempFail`` retries, ``Reject`` bounces, ``Discard`` drops with an event).

Changes are never return values: plugins edit through :class:`~pipeline.contract.message.Message`, and
each edit is recorded with the plugin's name.

Hooks may be ``async def`` (awaited, with the per-plugin timeout) or plain functions. CPU-heavy
work (HTML rewriting, signing) should be plain functions: they run in worker processes.
Implementations may accept any subset of the arguments named here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from pipeline.contract.context import Credential, Event, MessageContext, Session, Transaction
from pipeline.contract.plugin import PluginEnv
from pipeline.contract.verdicts import Verdict

PROJECT = "smtpgate"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# --------------------------------------------------------------------------------------------
# Admission phases (inside the SMTP session; verdicts are SMTP replies)
# --------------------------------------------------------------------------------------------


@hookspec
def on_connect(session: Session) -> Verdict | None:
    """A client connected. Reject here to answer the greeting with an error (e.g. a blocked IP)."""


@hookspec
def on_helo(session: Session, hostname: str) -> Verdict | None:
    """The client said HELO or EHLO with ``hostname``."""


@hookspec
def on_auth(session: Session, credential: Credential) -> Verdict | None:
    """A client authenticated (or matched an IP allow-list) as ``credential``."""


@hookspec
def on_mail_from(session: Session, transaction: Transaction, address: str) -> Verdict | None:
    """MAIL FROM. ``address`` is the reverse path without brackets (``""`` for the null sender)."""


@hookspec
def on_rcpt_to(session: Session, transaction: Transaction, address: str) -> Verdict | None:
    """RCPT TO, once per recipient; a verdict answers that recipient only."""


@hookspec
def on_message(ctx: MessageContext) -> Verdict | None:
    """End of DATA, before the spool commit: validate and tag the whole message.

    ``ctx.features`` is already resolved and control headers are gone. Edits made here are
    stored in the spool.
    """


# --------------------------------------------------------------------------------------------
# Processing phases (after the spool, in worker processes)
# --------------------------------------------------------------------------------------------


@hookspec
def on_transform(ctx: MessageContext) -> Verdict | None:
    """Once per message, before fan-out: work shared by every recipient (CSS inlining)."""


@hookspec
def on_personalize(ctx: MessageContext) -> Verdict | None:
    """Once per recipient copy (``ctx.recipient``): click tracking, open pixel, bounce address."""


@hookspec
def on_sign(ctx: MessageContext) -> Verdict | None:
    """Last, once per recipient copy: sign the final bytes. A signer calls ``ctx.message.seal()``."""


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


@hookspec
def on_event(event: Event) -> None:
    """A delivery or tracking event happened (accepted, delivered, bounced, opened, clicked, ...), or
    the gateway refused something (``rejected``: no queue id, aggregated, ``data["count"]``).

    Return values are ignored; an exception is logged and does not stop other plugins.
    """


# --------------------------------------------------------------------------------------------
# Command line (called on the plugin class, not an instance: no config, no chain)
# --------------------------------------------------------------------------------------------


@hookspec
def smtpgate_cli_commands(
    load_env: Callable[[str | None], PluginEnv], config_option: Callable[[Any], Any]
) -> list[Any] | None:
    """Commands the plugin adds to ``smtpgate`` (click commands or groups), e.g. ``smtpgate dkim``.

    Implement it as a ``@staticmethod``: the CLI calls it on the class of every built-in and
    entry-point plugin, whether or not the chain uses it. ``config_option`` is the core's
    ``--config/-c`` option (a decorator giving the command a ``config_path`` argument);
    ``load_env(config_path)`` returns the :class:`~pipeline.contract.plugin.PluginEnv` of that
    configuration (``None``: the default); a configuration error it raises becomes the usual
    one-line CLI error (exit 2).
    """


CLI_HOOKS = ("smtpgate_cli_commands",)

ADMISSION_PHASES = ("on_connect", "on_helo", "on_auth", "on_mail_from", "on_rcpt_to", "on_message")
PROCESSING_PHASES = ("on_transform", "on_personalize", "on_sign")
EVENT_PHASES = ("on_event",)
ALL_PHASES = ADMISSION_PHASES + PROCESSING_PHASES + EVENT_PHASES

__all__: list[Any] = ["hookimpl", "hookspec", *ALL_PHASES, *CLI_HOOKS]
