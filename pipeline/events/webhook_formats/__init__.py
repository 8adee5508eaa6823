"""Webhook payload formats: smtpgate's own, and SendGrid's, Mailgun's and Postmark's, so a consumer
written for one of those vendors verifies and parses smtpgate's webhooks unchanged.

Each format module gives ``TYPES`` (smtpgate event type -> the vendor's name, only the types the
vendor has), ``BATCH`` (events per request: SendGrid posts arrays) and ``render(endpoint, events,
key)`` -> :class:`Request` (body, headers, basic auth). ``webhooks.py`` calls :func:`render`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.events.webhook_formats import mailgun, postmark, sendgrid
from pipeline.events.webhook_formats.base import Request, WebhookEvent

if TYPE_CHECKING:
    from pipeline.config import WebhookEndpointSection


def format_module(name: str) -> Any:
    """The module of a vendor format (``None`` for smtpgate's own, rendered in webhooks.py)."""
    return {"sendgrid": sendgrid, "mailgun": mailgun, "postmark": postmark}.get(name)


def supports(fmt: str, event_type: str) -> bool:
    """Whether a format has an equivalent of this event type (Postmark has no "deferred")."""
    module = format_module(fmt)
    return module is None or event_type in module.TYPES


def batch_size(endpoint: WebhookEndpointSection | None) -> int:
    module = format_module(endpoint.format) if endpoint else None
    return endpoint.batch_size if endpoint is not None and module is not None and module.BATCH else 1


def render(endpoint: WebhookEndpointSection, events: Sequence[WebhookEvent], key: Any) -> Request:
    """The request for one vendor-format delivery of ``events`` (one, or a batch for SendGrid)."""
    module = format_module(endpoint.format)
    request: Request = module.render(endpoint, events, key)
    request.headers.update(basic_auth(endpoint))
    return request


def basic_auth(endpoint: WebhookEndpointSection | None) -> dict[str, str]:
    """The ``Authorization: Basic`` header of an endpoint with a username (Postmark's scheme)."""
    if endpoint is None or endpoint.username is None:
        return {}
    pair = f"{endpoint.username}:{endpoint.password or ''}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}


__all__ = ["Request", "WebhookEvent", "basic_auth", "batch_size", "format_module", "render", "supports"]
