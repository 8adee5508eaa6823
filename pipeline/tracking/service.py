"""The tracking service: an aiohttp server in the gateway's loop (default ``127.0.0.1:8080``)."""

from __future__ import annotations

from aiohttp import web


class TrackingService:
    """Serves a tracking app (:func:`pipeline.tracking.app.build_app`); port 0 binds an ephemeral
    port (read back in ``port``). Config errors surface when the app is built, before anything starts."""

    name = "tracking"

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

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
