"""Postmark's webhook format (https://postmarkapp.com/developer/webhooks/webhooks-overview): one
record per POST, shaped by ``RecordType`` (``Delivery``, ``Bounce``, ``SpamComplaint``, ``Open``,
``Click``, ``SubscriptionChange``) with Postmark's field names; ``Tag`` is the message's first
tag and ``Metadata`` its metadata. Postmark does not sign webhooks: receivers authenticate them
with HTTP basic auth (``username``/``password`` of the endpoint), as Postmark documents.
Postmark has no "accepted" or "deferred" webhook, so those events are not sent to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.events.webhook_formats.base import Request, WebhookEvent

if TYPE_CHECKING:
    from pipeline.config import WebhookEndpointSection

BATCH = False
TYPES = {
    "delivered": "Delivery",
    "bounced": "Bounce",
    "expired": "Bounce",
    "failed": "Bounce",
    "complained": "SpamComplaint",
    "opened": "Open",
    "clicked": "Click",
    "unsubscribed": "SubscriptionChange",
}
BOUNCE_TYPES = {  # (Type, TypeCode, Name) from Postmark's bounce type list
    "hard": ("HardBounce", 1, "Hard bounce"),
    "soft": ("SoftBounce", 4096, "Soft bounce/Undeliverable"),
    "complained": ("SpamComplaint", 512, "Spam complaint"),
}


def record(endpoint: WebhookEndpointSection, item: WebhookEvent) -> dict[str, Any]:
    e = item.stored.event
    common: dict[str, Any] = {
        "RecordType": TYPES[e.type],
        "MessageStream": endpoint.message_stream,
        "MessageID": e.queue_id,
        "Tag": item.tags[0] if item.tags else "",
        "Metadata": {k: str(v) for k, v in item.metadata.items()},
        "ServerID": 0,
    }
    when = item.iso_time()
    if e.type == "delivered":
        return {**common, "Recipient": e.recipient, "DeliveredAt": when, "Details": e.data.get("reply", "")}
    if e.type in ("bounced", "expired", "failed", "complained"):
        kind = "complained" if e.type == "complained" else ("soft" if item.stored.bounce_class == "soft" else "hard")
        type_, code, name = BOUNCE_TYPES[kind]
        details = str(e.data.get("diagnostic") or e.data.get("reply") or "")
        return {
            **common, "ID": item.stored.id, "Type": type_, "TypeCode": code, "Name": name,
            "Description": details, "Details": details, "Email": e.recipient, "From": "", "BouncedAt": when,
            "DumpAvailable": False, "Inactive": kind != "soft", "CanActivate": True, "Subject": "",
        }
    if e.type in ("opened", "clicked"):
        ua = e.data.get("user_agent", "")
        out = {
            **common, "Recipient": e.recipient, "ReceivedAt": when, "UserAgent": ua, "Platform": "Unknown",
            "Client": {"Name": "Unknown", "Company": "Unknown", "Family": "Unknown"},
            "OS": {"Name": "Unknown", "Company": "Unknown", "Family": "Unknown"}, "Geo": {},
        }
        if e.type == "opened":
            return {**out, "FirstOpen": bool(e.data.get("first", True)), "ReadSeconds": 0}
        return {**out, "ClickLocation": "HTML", "OriginalLink": e.url}
    return {  # unsubscribed
        **common, "Recipient": e.recipient, "ChangedAt": when, "Origin": "Recipient", "SuppressSending": True,
        "SuppressionReason": "ManualSuppression",
    }


def render(endpoint: WebhookEndpointSection, events: Sequence[WebhookEvent], key: Any) -> Request:
    [item] = events
    body = json.dumps(record(endpoint, item), separators=(",", ":"), default=str).encode("utf-8")
    return Request(body, {"Content-Type": "application/json"})
