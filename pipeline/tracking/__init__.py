"""The tracking HTTP service (clicks, opens, one-click unsubscribe, health, metrics, statistics)
and the services that run beside it in the gateway's event loop."""

from __future__ import annotations

from typing import Any

from pipeline.tracking.service import TrackingService


def tracking_services(gateway: Any) -> list[Any]:
    """The tracking HTTP service and the webhook sender, for ``Gateway.build_services``."""
    from pipeline.events.webhooks import WebhookSender

    return [TrackingService(gateway), WebhookSender(gateway.events, gateway.config)]


__all__ = ["TrackingService", "tracking_services"]
