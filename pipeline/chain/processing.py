"""The processing chain, after the spool: transform once, fan out per recipient, personalize,
sign. Used by the spool's worker processes and by ``smtpgate replay`` alike, so a replay shows
exactly what the server would send.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.chain.runner import Chain, Trace
from pipeline.contract.context import MessageContext
from pipeline.contract.verdicts import Verdict, ends


@dataclass
class CopyResult:
    """One recipient's copy: final bytes to deliver, or the verdict that stopped it."""

    recipient: str
    mail_from: str
    data: bytes | None
    verdict: Verdict | None = None

    @property
    def deliverable(self) -> bool:
        return self.data is not None and not ends(self.verdict)


async def process_message(
    chain: Chain, ctx: MessageContext, trace: Trace | None = None, recipients: list[str] | None = None
) -> list[CopyResult]:
    """Run transform, then personalize and sign for each recipient (or the given subset)."""
    mail_from = ctx.message.mail_from or ""
    verdict = await chain.run("on_transform", ctx=ctx, trace=trace)
    rcpts = ctx.message.rcpt_tos if recipients is None else recipients
    if ends(verdict):
        return [CopyResult(r, mail_from, None, verdict) for r in rcpts]
    results = []
    for rcpt in rcpts:
        copy = ctx.for_recipient(rcpt)
        v = await personalize_and_sign(chain, copy, trace)
        if v is not None:
            results.append(CopyResult(rcpt, copy.message.mail_from or "", None, v))
        else:
            results.append(CopyResult(rcpt, copy.message.mail_from or "", copy.message.as_bytes(), None))
    return results


async def personalize_and_sign(chain: Chain, ctx: MessageContext, trace: Trace | None = None) -> Verdict | None:
    """The per-copy phases on ``ctx`` as it is: the refusing verdict, or ``None`` when the copy is ready."""
    v = await chain.run("on_personalize", ctx=ctx, trace=trace)
    if not ends(v):
        v = await chain.run("on_sign", ctx=ctx, trace=trace)
    return v if ends(v) else None


async def process_as_one(chain: Chain, ctx: MessageContext, trace: Trace | None = None) -> Verdict | None:
    """Transform, personalize and sign ``ctx.message`` itself, as one copy for all its recipients.

    For a milter, where the MTA delivers one message to every recipient: personalisation runs in
    its per-message form (``ctx.recipient`` is ``None``), unless there is exactly one recipient,
    whose copy the message then is. Returns the refusing verdict, or ``None``.
    """
    v = await chain.run("on_transform", ctx=ctx, trace=trace)
    if ends(v):
        return v
    rcpts = ctx.message.rcpt_tos
    ctx.recipient = rcpts[0] if len(rcpts) == 1 else None
    return await personalize_and_sign(chain, ctx, trace)
