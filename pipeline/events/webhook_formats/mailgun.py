"""Mailgun's webhook format (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads):
one event per POST, ``{"signature": {...}, "event-data": {...}}``, the event data with Mailgun's
names (``event``, ``timestamp``, ``id``, ``recipient``, ``tags``, ``user-variables``,
``delivery-status``, ``severity`` for ``failed``), signed as Mailgun signs
(https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks): a random
50-character ``token``, the ``timestamp``, and ``signature`` = hex HMAC-SHA256 of
``timestamp + token`` with the webhook signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.events.webhook_formats.base import Request, WebhookEvent

if TYPE_CHECKING:
    from pipeline.config import WebhookEndpointSection

BATCH = False
TYPES = {
    "accepted": "accepted",
    "delivered": "delivered",
    "deferred": "failed",
    "bounced": "failed",
    "expired": "failed",
    "failed": "failed",
    "discarded": "rejected",
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
}


def signature(key: bytes, timestamp: str, token: str) -> str:
    return hmac.new(key, (timestamp + token).encode("ascii"), hashlib.sha256).hexdigest()


def event_data(item: WebhookEvent) -> dict[str, Any]:
    e = item.stored.event
    data: dict[str, Any] = {
        "id": f"smtpgate-{item.stored.id}",
        "event": TYPES[e.type],
        "timestamp": e.time,
        "log-level": "info",
        "recipient": e.recipient,
        "recipient-domain": item.domain,
        "tags": list(item.tags),
        "user-variables": dict(item.metadata),
        "campaigns": [{"id": e.campaign_id, "name": e.campaign_id}] if e.campaign_id else [],
        "message": {"headers": {"message-id": f"{e.queue_id}@smtpgate"}},
    }
    reply = str(e.data.get("reply") or e.data.get("diagnostic") or "")
    code = str(e.data.get("dsn") or e.data.get("status") or "")
    if e.type in ("delivered", "deferred", "bounced", "expired", "failed"):
        smtp_code = int(reply[:3]) if reply[:3].isdigit() else (250 if e.type == "delivered" else 550)
        data["delivery-status"] = {
            "code": smtp_code, "enhanced-code": code, "message": reply, "description": reply,
            "attempt-no": int(e.data.get("attempts", 1) or 1),
        }
    if TYPES[e.type] == "failed":
        temporary = e.type == "deferred" or (e.type == "bounced" and item.stored.bounce_class == "soft")
        data["log-level"] = "warn" if temporary else "error"
        data["severity"] = "temporary" if temporary else "permanent"
        data["reason"] = {"bounced": "bounce", "expired": "old"}.get(e.type, "generic")
    if e.type in ("opened", "clicked"):
        data["client-info"] = {"user-agent": e.data.get("user_agent", "")}
        if e.type == "clicked":
            data["url"] = e.url
    return data


def render(endpoint: WebhookEndpointSection, events: Sequence[WebhookEvent], key: Any) -> Request:
    [item] = events
    ts = str(int(time.time()))
    token = secrets.token_hex(25)  # 50 characters, as Mailgun's
    body = {
        "signature": {"timestamp": ts, "token": token, "signature": signature(key, ts, token)},
        "event-data": event_data(item),
    }
    return Request(json.dumps(body, separators=(",", ":"), default=str).encode("utf-8"),
                   {"Content-Type": "application/json"})
