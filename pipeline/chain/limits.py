"""Bounds on the work one message can cause, checked at the end of DATA.

A 250 promises the message can be processed. Without bounds, a deterministic message (a
thousand nested multiparts, ten thousand HTML parts) gets queued and then fails every attempt
(or a 4xx makes the client retry the same bomb until it expires). So the shape is measured once
after parsing, before any plugin runs, and a message past a ``[limits]`` bound is refused with
a 5xx naming the bound: ``554 5.6.0`` for nesting (the structure itself is refused, as Postfix's
``mime_nesting_limit``), ``552 5.3.4`` ("message too big for system", RFC 3463) for the counts
and sizes. Admission is shared by the SMTP ingress, ``smtpgate replay`` and any other entry
point, so they all get the same bounds.

The check runs in the ingress process for every message, so it costs as little as it can: the
structure comes from :meth:`Message.structure` (a boundary scan that builds no tree and decodes
nothing), and HTML is decoded only when an upper bound computed from the encoded sizes could be
past ``max_html_bytes`` or ``max_links``; then the exact counts decide, as they always did.
"""

from __future__ import annotations

import re

from pipeline.config import LimitsSection
from pipeline.contract.message import Message
from pipeline.contract.mime import Entity
from pipeline.contract.verdicts import Reject

_LINK = re.compile(rb"<a[\s/][^<>]*?href[^<>]*+>", re.IGNORECASE)
"""A complete ``<a ...href...>`` start tag (never spanning a ``<``, as in the link finder): a
cheap superset of what click tracking rewrites."""

_SHORTEST_LINK = len(b"<a href>")
"""No match of :data:`_LINK` is shorter, and matches do not overlap: a part of n decoded octets
has at most n // 8 links."""


def check_limits(message: Message, limits: LimitsSection) -> Reject | None:
    """The first bound ``message`` exceeds, as a refusal; ``None`` when it is within all of them."""
    structure = message.structure()
    if structure.truncated == "parts":
        return _too_many_parts(limits)
    entities = list(structure.walk())
    html = [e for e in entities if _is_html_body(e)]
    exact = _may_exceed(html, limits)
    parts = html_parts = links = html_bytes = 0
    for part in entities:
        if part.depth > limits.max_mime_depth:
            return Reject(
                554,
                "5.6.0",
                f"Message MIME nesting exceeds {limits.max_mime_depth} levels (limits.max_mime_depth)",
            )
        parts += 1
        if parts > limits.max_mime_parts:
            return _too_many_parts(limits)
        if not _is_html_body(part):
            continue
        html_parts += 1
        if html_parts > limits.max_html_parts:
            return Reject(
                552,
                "5.3.4",
                f"Message has more than {limits.max_html_parts} HTML parts (limits.max_html_parts)",
            )
        if not exact:
            continue
        data = part.payload_bytes()
        html_bytes += len(data)
        if html_bytes > limits.max_html_bytes:
            return Reject(
                552,
                "5.3.4",
                f"Message HTML exceeds {limits.max_html_bytes} bytes decoded (limits.max_html_bytes)",
            )
        links += len(_LINK.findall(data))
        if links > limits.max_links:
            return Reject(552, "5.3.4", f"Message has more than {limits.max_links} links (limits.max_links)")
    return None


def _is_html_body(part: Entity) -> bool:
    return not part.is_multipart and part.content_type == "text/html" and not part.is_attachment


def _decoded_size_bound(part: Entity) -> int:
    """An upper bound of the part's decoded size, from its encoded size: quoted-printable never
    grows when decoded, base64 gives at most 3 octets per 4 (padding included)."""
    size = part.body_size
    if part.cte == "base64":
        return (size + 3) // 4 * 3
    return size


def _may_exceed(html: list[Entity], limits: LimitsSection) -> bool:
    """Whether the decoded HTML could be past ``max_html_bytes`` or ``max_links``: only then is it
    decoded and counted. For links the size bound is tightened, when needed, by counting ``<``
    in the encoded text (each decoded ``<`` is a literal one or a quoted-printable ``=3C``)."""
    sizes = [_decoded_size_bound(e) for e in html]
    if sum(sizes) > limits.max_html_bytes:
        return True
    if sum(size // _SHORTEST_LINK for size in sizes) <= limits.max_links:
        return False
    bound = 0
    for part, size in zip(html, sizes, strict=True):
        if part.cte == "base64":
            bound += size // _SHORTEST_LINK
            continue
        body = part.body()
        bound += body.count(b"<") + (
            body.count(b"=3C") + body.count(b"=3c") if part.cte == "quoted-printable" else 0
        )
    return bound > limits.max_links


def _too_many_parts(limits: LimitsSection) -> Reject:
    return Reject(
        552, "5.3.4", f"Message has more than {limits.max_mime_parts} MIME parts (limits.max_mime_parts)"
    )
