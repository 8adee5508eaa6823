"""End-of-DATA admission, shared by the SMTP ingress and ``smtpgate replay``.

Parse the header block (the MIME tree only if a plugin asks for the parts; the limits scan
the structure without building it), resolve the feature switches (stripping control headers), run the
``on_message`` phase. The result is either a verdict for the client or a context ready for
the spool.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.chain.features import strip_header_prefixes
from pipeline.chain.limits import check_limits
from pipeline.chain.runner import Chain, Trace
from pipeline.contract.context import Credential, MessageContext, Session, new_queue_id
from pipeline.contract.message import Message, MessageError
from pipeline.contract.verdicts import Reject, Verdict


async def admit_message(
    chain: Chain,
    raw: bytes,
    mail_from: str,
    rcpt_tos: Sequence[str],
    *,
    session: Session | None = None,
    credential: Credential | None = None,
    queue_id: str | None = None,
    trace: Trace | None = None,
) -> tuple[Verdict | None, MessageContext | None]:
    """Run admission for one message: ``(verdict, ctx)``; ``ctx`` is ``None`` when unparseable."""
    limits = chain.plugins.config.limits
    try:
        message = Message(
            raw, mail_from, rcpt_tos, max_depth=limits.max_mime_depth, max_parts=limits.max_mime_parts
        )
    except MessageError as exc:
        return Reject(550, "5.6.0", f"Message is not RFC 5322: {exc}"), None
    refusal = check_limits(message, limits)
    if refusal is not None:
        return refusal, None
    if credential is None and session is not None:
        credential = session.credential
    features = chain.features.resolve(credential, message)
    ctx = MessageContext(
        message=message,
        queue_id=queue_id or new_queue_id(),
        credential=credential,
        features=features if isinstance(features, dict) else {},
        session=session,
    )
    if trace is not None:
        trace.queue_id = ctx.queue_id
    if isinstance(features, Reject):
        return features, ctx
    verdict = await chain.run("on_message", ctx=ctx, trace=trace)
    prefixes = chain.plugins.config.chain.strip_header_prefixes
    if prefixes and not message.sealed_by:
        strip_header_prefixes(message, prefixes)
    return verdict, ctx
