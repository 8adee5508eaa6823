"""The in-process driver: one message through every phase the SMTP ingress drives, no server.

``on_connect``, ``on_helo``, ``on_auth`` (when a credential is given), ``on_mail_from``, one
``on_rcpt_to`` per recipient, then end-of-DATA admission (``on_message``) and processing
(``on_transform``, ``on_personalize``, ``on_sign`` per recipient). ``smtpgate replay`` and the
plugin authors' :func:`run_chain` both run this code, so a plugin behaves here as it does
behind the ingress. What a verdict means is :func:`pipeline.contract.verdicts.ends` /
``refuses`` / ``drops``::

    from pipeline.chain.driver import run_chain
    result = run_chain(open("samples/01-plain-text.eml", "rb").read(), plugins=[MyPlugin])
    assert result.verdict is None
    assert b"X-Hello: world" in result.copies[0].data
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.chain.admission import admit_message
from pipeline.chain.loader import PluginSet
from pipeline.chain.processing import CopyResult, process_message
from pipeline.chain.runner import Chain, Trace
from pipeline.config import Config, parse_config
from pipeline.contract.context import Credential, MessageContext, Session, Transaction
from pipeline.contract.message import Message, MessageError
from pipeline.contract.plugin import SuppressionList
from pipeline.contract.verdicts import Discard, Verdict, drops, ends, refuses

DEFAULT_RECIPIENT = "recipient@example.com"
_session_ids = itertools.count(1)


def make_config(overrides: dict[str, Any] | None = None, plugins: Sequence[str] = ()) -> Config:
    """A config with the given overrides (TOML-shaped dict) and chain (default: no built-ins)."""
    data: dict[str, Any] = {"chain": {"plugins": list(plugins)}}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, "<test>")


class EmptyStoplist:
    """The driver's stoplist when none is given: nobody is suppressed (a test names its own)."""

    def contains(self, address: str, credential: str | None = None) -> bool:
        return False

    def reason(self, address: str, credential: str | None = None) -> str | None:
        return None

    async def reason_async(self, address: str, credential: str | None = None) -> str | None:
        return None


def make_chain(
    config: Config,
    extra_plugins: Sequence[Any] = (),
    *,
    open_suppression: Callable[[], SuppressionList] | None = EmptyStoplist,
) -> Chain:
    """A chain of the config's plugins plus plugin classes given directly.

    ``open_suppression`` opens ``env.suppression``: an empty stoplist by default (``smtpgate
    replay`` and the gateway pass the real one); ``None`` gives none, so using it fails closed.
    """
    return Chain(PluginSet(config, list(extra_plugins), open_suppression=open_suppression))


def envelope_from_headers(raw: bytes) -> tuple[str, list[str]]:
    """Envelope defaults from the From / To / Cc headers, as ``replay`` uses them."""
    try:
        msg = Message(raw)
    except MessageError:
        return "", []
    senders = msg.addresses("From")
    rcpts = [a for _, a in msg.addresses("To") + msg.addresses("Cc") if a]
    return (senders[0][1] if senders else ""), rcpts


@dataclass
class ChainResult:
    """What a message became: the verdict that ended it (``None``: accepted), who gave it, the
    recipients refused at RCPT, the admitted context, each recipient's copy, and the trace."""

    verdict: Verdict | None
    ctx: MessageContext | None
    copies: list[CopyResult] = field(default_factory=list)
    trace: Trace = field(default_factory=Trace)
    mail_from: str = ""
    rcpt_tos: list[str] = field(default_factory=list)
    stopped_by: str = ""  # "plugin (phase)" that gave ``verdict``
    refused: list[tuple[str, Verdict]] = field(default_factory=list)  # recipients refused at RCPT

    @property
    def rejected(self) -> bool:
        """The client would have been told no (4xx or 5xx) for the whole message."""
        return refuses(self.verdict)

    @property
    def discarded(self) -> bool:
        return drops(self.verdict)

    @property
    def undelivered(self) -> list[CopyResult]:
        """Copies a processing phase stopped with Reject or TempFail (a bounce or a retry)."""
        return [c for c in self.copies if refuses(c.verdict)]

    @property
    def ok(self) -> bool:
        """Accepted, and every recipient's copy is ready to deliver (or deliberately discarded)."""
        return not self.rejected and not self.refused and not self.undelivered


def _stopper(trace: Trace, start: int) -> str:
    """``plugin (phase)`` of the last trace entry since ``start`` that gave a verdict."""
    for entry in reversed(trace.entries[start:]):
        if entry.verdict != "continue" and not entry.verdict.startswith("skipped"):
            return f"{entry.plugin} ({entry.phase})"
    return "core"


def submission_session(credential: Credential | None, listener: str = "driver") -> Session:
    """The session of a well-behaved local client: 127.0.0.1, EHLO localhost, on TLS."""
    return Session(
        peer=("127.0.0.1", 0),
        listener=listener,
        helo="localhost",
        tls=True,
        credential=credential,
        session_id=f"{listener}-{next(_session_ids)}",  # (a random id costs a getrandom call per message)
    )


async def drive(
    chain: Chain,
    raw: bytes,
    mail_from: str,
    rcpt_tos: Sequence[str],
    *,
    credential: Credential | None = None,
    session: Session | None = None,
) -> ChainResult:
    """Every phase, as an SMTP session then the spool's workers would run them, in process."""
    session = session or submission_session(credential)
    trace = Trace()
    result = ChainResult(None, None, trace=trace, mail_from=mail_from, rcpt_tos=list(rcpt_tos))
    # Before DATA there is no message yet: switches come from the config and the credential.
    features = chain.features.session(credential)
    txn = Transaction(mail_from=mail_from)
    steps: list[tuple[str, dict[str, Any]]] = [
        ("on_connect", {"session": session}),
        ("on_helo", {"session": session, "hostname": session.helo or "localhost"}),
    ]
    if credential is not None:
        steps.append(("on_auth", {"session": session, "credential": credential}))
    steps.append(("on_mail_from", {"session": session, "transaction": txn, "address": mail_from}))
    for phase, kwargs in steps:
        start = len(trace.entries)
        verdict = await chain.run(phase, features=features, trace=trace, **kwargs)
        if ends(verdict):
            result.verdict, result.stopped_by = verdict, _stopper(trace, start)
            return result
    for rcpt in rcpt_tos:
        verdict = await chain.run(
            "on_rcpt_to", features=features, trace=trace, session=session, transaction=txn, address=rcpt
        )
        if refuses(verdict):
            result.refused.append((rcpt, verdict))
        elif not drops(verdict):
            txn.rcpt_tos.append(rcpt)
    if not txn.rcpt_tos:  # the ingress refuses DATA when no recipient is left
        result.verdict = result.refused[0][1] if result.refused else Discard("every recipient discarded")
        result.stopped_by = "on_rcpt_to"
        return result
    start = len(trace.entries)
    verdict, ctx = await admit_message(
        chain, raw, mail_from, list(txn.rcpt_tos), session=session, credential=credential, trace=trace
    )
    result.ctx = ctx
    if ends(verdict) or ctx is None:
        result.verdict, result.stopped_by = verdict, _stopper(trace, start)
        return result
    result.copies = await process_message(chain, ctx, trace)
    return result


async def run_chain_async(
    raw: bytes,
    chain: Chain,
    *,
    mail_from: str | None = None,
    rcpt_tos: Sequence[str] | None = None,
    credential: Credential | None = None,
) -> ChainResult:
    """:func:`drive` with the envelope defaulting to the From / To / Cc headers."""
    default_from, default_rcpts = envelope_from_headers(raw)
    mail_from = default_from if mail_from is None else mail_from
    rcpts = list(rcpt_tos) if rcpt_tos else default_rcpts or [DEFAULT_RECIPIENT]
    return await drive(chain, raw, mail_from, rcpts, credential=credential)


def run_chain(
    raw: bytes,
    plugins: Sequence[Any] = (),
    *,
    config: Config | dict[str, Any] | None = None,
    mail_from: str | None = None,
    rcpt_tos: Sequence[str] | None = None,
    credential: Credential | None = None,
    open_suppression: Callable[[], SuppressionList] | None = EmptyStoplist,
) -> ChainResult:
    """Synchronous one-shot: build a chain of ``plugins`` (classes or built-in names) and run it."""
    names = [p for p in plugins if isinstance(p, str)]
    classes = [p for p in plugins if not isinstance(p, str)]
    if isinstance(config, Config) and names:  # they would be silently left out of the chain
        raise ValueError(f"run_chain: built-in names {names} with a Config: put them in its [chain] plugins")
    cfg = config if isinstance(config, Config) else make_config(config, names)
    chain = make_chain(cfg, classes, open_suppression=open_suppression)
    return asyncio.run(
        run_chain_async(raw, chain, mail_from=mail_from, rcpt_tos=rcpt_tos, credential=credential)
    )
