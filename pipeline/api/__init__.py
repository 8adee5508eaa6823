"""The management API (``/api/v1``, docs/api.md): the message log's search and each message's story,
on its own listener (``[api]``, default ``127.0.0.1:8081``), behind bearer tokens.

It works through ports (:class:`~pipeline.ports.MessageLog`, :class:`~pipeline.ports.Spool`,
:class:`~pipeline.ports.EventSink`, :class:`~pipeline.ports.EventStore` (statistics),
:class:`~pipeline.ports.SuppressionAdmin`, :class:`~pipeline.ports.CredentialAdmin`,
:class:`~pipeline.ports.ApiTokenVerifier`); the composition root opens the stores and wires them.
"""

from __future__ import annotations

from pipeline.api.app import ApiPorts, build_api_app
from pipeline.config import Config
from pipeline.toolkit.http_service import HttpService


class ApiService(HttpService):
    """The API app on its listener."""

    name = "api"


def api_service(config: Config, ports: ApiPorts, *, host: str | None = None, port: int | None = None) -> ApiService:
    """The API service on ``[api] listen_address:listen_port`` (``host``/``port`` override them: tests)."""
    a = config.api
    return ApiService(build_api_app(ports), a.listen_address if host is None else host,
                      a.listen_port if port is None else port)


__all__ = ["ApiPorts", "ApiService", "api_service", "build_api_app"]
