"""The tracking service: an aiohttp server in the gateway's loop (default ``127.0.0.1:8080``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pipeline.tracking.app import build_app


class TrackingService:
    """Serves ``build_app(gateway)``; port 0 binds an ephemeral port (read back in ``port``)."""

    name = "tracking"

    def __init__(self, gateway: Any, host: str | None = None, port: int | None = None) -> None:
        self.gateway = gateway
        self.host = host if host is not None else gateway.config.tracking.listen_address
        self.requested_port = port if port is not None else gateway.config.tracking.listen_port
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self.app = build_app(gateway)  # config errors surface at build time, before anything starts

    @property
    def url(self) -> str:
        """The local URL the service answers on (not the public ``base_url``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self, grace: float) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
