"""The processing chain, after the spool: transform once, fan out per recipient, personalize,
sign. Used by the spool's worker processes and by ``smtpgate replay`` alike, so a replay shows
exactly what the server would send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.chain.runner import Chain, Trace, TraceEntry
from pipeline.contract.context import MessageContext
from pipeline.contract.verdicts import Verdict, ends


@dataclass
class CopyResult:
    """One recipient's copy: final bytes to deliver, or the verdict that stopped it."""

    recipient: str
    mail_from: str
    data: bytes | None
    verdict: Verdict | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)  # the hooks that made this copy (message log)
    # whether ``data`` holds no bare CR or LF, when a worker process checked it (see
    # pipeline.delivery.workers.mark_line_ends); None: not checked, the egress checks
    crlf: bool | None = None

    @property
    def deliverable(self) -> bool:
        return self.data is not None and not ends(self.verdict)


def trace_summary(entries: list[TraceEntry]) -> list[dict[str, Any]]:
    """Trace entries as plain data (they cross from worker processes and go into the message log).

    Made for every recipient copy (a row per hook): a plain loop, no per-row unpacking."""
    rows = []
    for e in entries:
        edits = e.edits
        row = {
            "phase": e.phase,
            "plugin": e.plugin,
            "verdict": e.verdict,
            "ms": round(e.ms, 3),
            "edits": [str(edit) for edit in edits] if edits else [],
        }
        if e.error:
            row["error"] = e.error
        rows.append(row)
    return rows


MAX_LOGGED_HEADERS = 100


def final_headers(data: bytes) -> list[list[str]]:
    """A copy's header fields as it leaves (``[name, unfolded value]``), bounded for the message log."""
    end = data.find(b"\r\n\r\n")
    block = data[: end if end >= 0 else len(data)].decode("utf-8", "replace")
    fields: list[list[str]] = []
    for line in block.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1] = (fields[-1][1] + " " + line.strip())[:2000]
        elif ":" in line and len(fields) < MAX_LOGGED_HEADERS:
            name, _, value = line.partition(":")
            fields.append([name.strip(), value.strip()[:2000]])
    return fields


def copy_log(c: CopyResult) -> dict[str, Any]:
    """What the message log keeps of one processed copy: its hooks' trace and its final headers."""
    return {"trace": c.trace, **({"headers": final_headers(c.data)} if c.data is not None else {})}


async def process_message(
    chain: Chain, ctx: MessageContext, trace: Trace | None = None, recipients: list[str] | None = None
) -> list[CopyResult]:
    """Run transform, then personalize and sign for each recipient (or the given subset). Each result
    carries the trace of the hooks that made it: the shared transform, then its own copy's."""
    trace = trace if trace is not None else Trace(ctx.queue_id)
    mail_from = ctx.message.mail_from or ""
    start = len(trace.entries)  # a caller's trace may hold admission already (replay)
    verdict = await chain.run("on_transform", ctx=ctx, trace=trace)
    shared = trace_summary(trace.entries[start:])
    rcpts = ctx.message.rcpt_tos if recipients is None else recipients
    if ends(verdict):
        return [CopyResult(r, mail_from, None, verdict, list(shared)) for r in rcpts]
    results = []
    only = len(rcpts) == 1
    for rcpt in rcpts:
        copy = ctx.for_recipient(rcpt, only=only)
        first = len(trace.entries)
        v = await personalize_and_sign(chain, copy, trace)
        own = shared + trace_summary(trace.entries[first:])
        if v is not None:
            results.append(CopyResult(rcpt, copy.message.mail_from or "", None, v, own))
        else:
            results.append(CopyResult(rcpt, copy.message.mail_from or "", copy.message.as_bytes(), None, own))
    return results


async def personalize_and_sign(
    chain: Chain, ctx: MessageContext, trace: Trace | None = None
) -> Verdict | None:
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
