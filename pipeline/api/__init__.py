"""The management API (``/api/v1``, docs/api.md): the message log's search and each message's story,
on its own listener (``[api]``, default ``127.0.0.1:8081``), behind bearer tokens.

It works through ports (:class:`~pipeline.ports.MessageLog`, :class:`~pipeline.ports.Spool`,
:class:`~pipeline.ports.EventSink`, :class:`~pipeline.ports.EventStore` (statistics),
:class:`~pipeline.ports.SuppressionAdmin`,
:class:`~pipeline.ports.ApiTokenVerifier`); the composition root opens the stores and wires them.
"""

from __future__ import annotations

from pipeline.api.app import build_api_app
from pipeline.config import Config
from pipeline.ports import (
    ApiTokenVerifier,
    EventSink,
    EventStore,
    MessageLog,
    Metrics,
    Spool,
    SuppressionAdmin,
)
from pipeline.toolkit.http_service import HttpService


class ApiService(HttpService):
    """The API app on its listener."""

    name = "api"


def api_service(
    config: Config, tokens: ApiTokenVerifier, log: MessageLog, spool: Spool, events: EventSink, store: EventStore,
    suppressions: SuppressionAdmin, metrics: Metrics, *, host: str | None = None, port: int | None = None,
) -> ApiService:
    """The API service on ``[api] listen_address:listen_port`` (``host``/``port`` override them: tests).
    ``store`` is read for statistics; ``suppressions`` is the stoplist the API manages."""
    app = build_api_app(tokens, log, spool, events, store, suppressions, metrics)
    a = config.api
    return ApiService(app, a.listen_address if host is None else host, a.listen_port if port is None else port)


__all__ = ["ApiService", "api_service", "build_api_app"]
