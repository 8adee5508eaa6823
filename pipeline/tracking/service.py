"""The tracking service: the tracking app on its listener (default ``127.0.0.1:8080``)."""

from __future__ import annotations

from pipeline.toolkit.http_service import HttpService
from pipeline.tracking.app import BACKLOG


class TrackingService(HttpService):
    """Serves a tracking app (:func:`pipeline.tracking.app.build_app`)."""

    name = "tracking"

    @property
    def backlog(self) -> int:
        """Clicks and opens held in memory for the event store (``/metrics``: ``smtpgate_event_backlog_events``)."""
        held = self.app.get(BACKLOG)
        return len(held) if held is not None else 0
