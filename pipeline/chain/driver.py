"""Helpers for plugin authors: run a plugin (or a whole chain) over a message without a server.

    from pipeline.chain.driver import run_chain
    result = run_chain(open("samples/01-plain-text.eml", "rb").read(), plugins=[MyPlugin])
    assert result.verdict is None
    assert b"X-Hello: world" in result.copies[0].data
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.chain.admission import admit_message
from pipeline.chain.loader import PluginSet
from pipeline.chain.processing import CopyResult, process_message
from pipeline.chain.runner import Chain, Trace
from pipeline.config import Config, parse_config
from pipeline.contract.context import Credential, MessageContext
from pipeline.contract.message import Message, MessageError
from pipeline.contract.verdicts import Verdict


def make_config(overrides: dict[str, Any] | None = None, plugins: Sequence[str] = ()) -> Config:
    """A config with the given overrides (TOML-shaped dict) and chain (default: no built-ins)."""
    data: dict[str, Any] = {"chain": {"plugins": list(plugins)}}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, "<test>")


def make_chain(config: Config, extra_plugins: Sequence[Any] = ()) -> Chain:
    """A chain of the config's plugins plus plugin classes given directly."""
    return Chain(PluginSet(config, list(extra_plugins)))


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
    """What a message became: the admission verdict, the context, each copy, and the trace."""

    verdict: Verdict | None
    ctx: MessageContext | None
    copies: list[CopyResult] = field(default_factory=list)
    trace: Trace = field(default_factory=Trace)


async def run_chain_async(
    raw: bytes,
    chain: Chain,
    *,
    mail_from: str | None = None,
    rcpt_tos: Sequence[str] | None = None,
    credential: Credential | None = None,
) -> ChainResult:
    """Admission then (if accepted) processing, in process."""
    default_from, default_rcpts = envelope_from_headers(raw)
    mail_from = default_from if mail_from is None else mail_from
    rcpts = list(rcpt_tos) if rcpt_tos else default_rcpts or ["recipient@example.com"]
    trace = Trace()
    verdict, ctx = await admit_message(
        chain, chain.plugins.config, raw, mail_from, rcpts, credential=credential, trace=trace
    )
    result = ChainResult(verdict, ctx, trace=trace)
    if ctx is None or verdict is not None and verdict.reply().startswith(("4", "5")):
        return result
    from pipeline.contract.verdicts import Discard

    if isinstance(verdict, Discard):
        return result
    result.copies = await process_message(chain, ctx, trace)
    return result


def run_chain(
    raw: bytes,
    plugins: Sequence[Any] = (),
    *,
    config: Config | dict[str, Any] | None = None,
    mail_from: str | None = None,
    rcpt_tos: Sequence[str] | None = None,
    credential: Credential | None = None,
) -> ChainResult:
    """Synchronous one-shot: build a chain of ``plugins`` (classes or built-in names) and run it."""
    names = [p for p in plugins if isinstance(p, str)]
    classes = [p for p in plugins if not isinstance(p, str)]
    if isinstance(config, Config) and names:  # they would be silently left out of the chain
        raise ValueError(f"run_chain: built-in names {names} with a Config: put them in its [chain] plugins")
    cfg = config if isinstance(config, Config) else make_config(config, names)
    chain = make_chain(cfg, classes)
    return asyncio.run(
        run_chain_async(raw, chain, mail_from=mail_from, rcpt_tos=rcpt_tos, credential=credential)
    )


def format_date() -> str:
    return email.utils.formatdate(localtime=False)
