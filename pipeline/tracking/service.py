"""The tracking service: the tracking app on its listener (default ``127.0.0.1:8080``)."""

from __future__ import annotations

from pipeline.toolkit.http_service import HttpService


class TrackingService(HttpService):
    """Serves a tracking app (:func:`pipeline.tracking.app.build_app`)."""

    name = "tracking"
