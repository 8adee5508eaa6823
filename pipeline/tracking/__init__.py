"""The tracking HTTP service (clicks, opens, one-click unsubscribe, health, metrics, statistics)
and the webhook sender that runs beside it in the gateway's event loop."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.config import Config
from pipeline.events.store import EventStoreBase
from pipeline.events.webhooks import WebhookSender
from pipeline.ports import EventSink, Metrics
from pipeline.tracking.app import build_app
from pipeline.tracking.service import TrackingService


def tracking_services(
    config: Config,
    events: EventSink,
    store: EventStoreBase,
    metrics: Metrics,
    *,
    host: str | None = None,
    port: int | None = None,
    database_up: Callable[[], bool] = lambda: True,
) -> tuple[TrackingService, WebhookSender]:
    """The tracking HTTP service and the webhook sender (whose counts ``/metrics`` shows);
    ``database_up``: whether the shared database answers (clicks go to the backlog while not)."""
    sender = WebhookSender(store, config)
    app = build_app(config, events, store, metrics, [sender], database_up)
    t = config.tracking
    service = TrackingService(app, t.listen_address if host is None else host, t.listen_port if port is None else port)
    return service, sender


__all__ = ["TrackingService", "build_app", "tracking_services"]
