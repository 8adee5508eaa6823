"""Bounds on the work one message can cause, checked at the end of DATA.

A 250 promises the message can be processed. Without bounds, a deterministic message (a
thousand nested multiparts, ten thousand HTML parts) gets queued and then fails every attempt
(or a 4xx makes the client retry the same bomb until it expires). So the shape is measured once
after parsing, before any plugin runs, and a message past a ``[limits]`` bound is refused with
a 5xx naming the bound: ``554 5.6.0`` for nesting (the structure itself is refused, as Postfix's
``mime_nesting_limit``), ``552 5.3.4`` ("message too big for system", RFC 3463) for the counts
and sizes. Admission is shared by the SMTP ingress, ``smtpgate replay`` and any other entry
point, so they all get the same bounds.
"""

from __future__ import annotations

import re

from pipeline.config import LimitsSection
from pipeline.contract.message import Message
from pipeline.contract.verdicts import Reject

_LINK = re.compile(rb"<a[\s/][^<>]*?href[^<>]*+>", re.IGNORECASE)
"""A complete ``<a ...href...>`` start tag (never spanning a ``<``, as in the link finder): a
cheap superset of what click tracking rewrites."""


def check_limits(message: Message, limits: LimitsSection) -> Reject | None:
    """The first bound ``message`` exceeds, as a refusal; ``None`` when it is within all of them."""
    if message.root.truncated == "parts":
        return _too_many_parts(limits)
    parts = html_parts = links = html_bytes = 0
    for part in message.walk():
        if part.depth > limits.max_mime_depth:
            return Reject(
                554, "5.6.0", f"Message MIME nesting exceeds {limits.max_mime_depth} levels (limits.max_mime_depth)"
            )
        parts += 1
        if parts > limits.max_mime_parts:
            return _too_many_parts(limits)
        if part.is_multipart or part.content_type != "text/html" or part.is_attachment:
            continue
        html_parts += 1
        if html_parts > limits.max_html_parts:
            return Reject(
                552, "5.3.4", f"Message has more than {limits.max_html_parts} HTML parts (limits.max_html_parts)"
            )
        data = part.payload_bytes()
        html_bytes += len(data)
        if html_bytes > limits.max_html_bytes:
            return Reject(
                552, "5.3.4", f"Message HTML exceeds {limits.max_html_bytes} bytes decoded (limits.max_html_bytes)"
            )
        links += len(_LINK.findall(data))
        if links > limits.max_links:
            return Reject(552, "5.3.4", f"Message has more than {limits.max_links} links (limits.max_links)")
    return None


def _too_many_parts(limits: LimitsSection) -> Reject:
    return Reject(552, "5.3.4", f"Message has more than {limits.max_mime_parts} MIME parts (limits.max_mime_parts)")

