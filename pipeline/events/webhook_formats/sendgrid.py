"""SendGrid's Event Webhook format (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event):
a JSON array of events per POST, each with ``email``, ``timestamp``, ``event``, ``sg_event_id``,
``sg_message_id``, ``category`` and the message's unique args as top-level keys; signed as the
Signed Event Webhook is (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features):
ECDSA P-256 with SHA-256 over ``timestamp + body``, the DER signature base64-encoded in
``X-Twilio-Email-Event-Webhook-Signature``, the timestamp in ``X-Twilio-Email-Event-Webhook-Timestamp``.
A receiver verifies with the base64 DER public key (``smtpgate webhooks sendgrid-public-key``).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.events.webhook_formats.base import Request, WebhookEvent
from pipeline.storage.generated import generated_secret

if TYPE_CHECKING:
    from pipeline.config import Config, WebhookEndpointSection

BATCH = True
TYPES = {
    "accepted": "processed",
    "delivered": "delivered",
    "deferred": "deferred",
    "bounced": "bounce",
    "expired": "dropped",
    "failed": "dropped",
    "discarded": "dropped",
    "opened": "open",
    "clicked": "click",
    "unsubscribed": "unsubscribe",
    "complained": "spamreport",
}
SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
RESERVED = {"email", "timestamp", "event", "sg_event_id", "sg_message_id", "category", "smtp-id"}


def load_key(config: Config, endpoint: WebhookEndpointSection) -> ec.EllipticCurvePrivateKey:
    """The endpoint's PEM P-256 key, or one generated once: ``<data_dir>/webhook-sendgrid.pem``, or
    the shared database's row with ``[storage] url`` (the receiver checks one public key, whichever
    node posted)."""
    if endpoint.signing_key:
        pem = endpoint.signing_key.encode("ascii")
    else:
        pem = generated_secret("webhook-sendgrid.pem", Path(config.data_dir), config.storage.url, _new_pem).encode()
    loaded = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise ValueError("webhooks.endpoints.signing_key: SendGrid signatures need a P-256 (prime256v1) EC key")
    return loaded


def _new_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def public_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The verification key as SendGrid shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def event_body(item: WebhookEvent) -> dict[str, Any]:
    e = item.stored.event
    body: dict[str, Any] = {
        "email": e.recipient,
        "timestamp": int(e.time),
        "event": TYPES[e.type],
        "sg_event_id": base64.urlsafe_b64encode(f"smtpgate-{item.stored.id}".encode()).decode("ascii"),
        "sg_message_id": e.queue_id,
        "smtp-id": f"<{e.queue_id}@smtpgate>",
    }
    if item.tags:
        body["category"] = list(item.tags)
    for k, v in item.metadata.items():  # unique args are top-level keys in SendGrid's events
        if k not in RESERVED:
            body[k] = v
    data = e.data
    if e.type == "delivered":
        body["response"] = data.get("reply", "")
    elif e.type == "deferred":
        body["response"] = data.get("reply", "")
        body["attempt"] = str(data.get("attempts", 1))
    elif e.type == "bounced":
        body["type"] = "bounce" if item.stored.bounce_class == "hard" else "blocked"
        body["status"] = str(data.get("status") or data.get("dsn") or "")
        body["reason"] = str(data.get("diagnostic") or data.get("reply") or "")
    elif e.type in ("expired", "failed", "discarded"):
        body["reason"] = str(data.get("reason") or data.get("reply") or e.type)
    elif e.type in ("opened", "clicked"):
        body["useragent"] = data.get("user_agent", "")
        if e.type == "opened":
            body["sg_machine_open"] = bool(item.stored.machine)
        else:
            body["url"] = e.url
    return body


def sign(key: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> str:
    return base64.b64encode(key.sign(timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def render(endpoint: WebhookEndpointSection, events: Sequence[WebhookEvent], key: Any) -> Request:
    body = json.dumps([event_body(e) for e in events], separators=(",", ":"), default=str).encode("utf-8")
    ts = str(int(time.time()))
    return Request(body, {"Content-Type": "application/json", TIMESTAMP: ts, SIGNATURE: sign(key, ts, body)})
