"""An aiohttp application on its own listener in the gateway's event loop: the tracking service
(default ``127.0.0.1:8080``) and the management API (``127.0.0.1:8081``) are each one of these."""

from __future__ import annotations

from aiohttp import web


class HttpService:
    """Serves one app; port 0 binds an ephemeral port (read back in ``port``). Config errors surface
    when the app is built, before anything starts."""

    name = "http"

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The local URL the service answers on (not a public ``base_url``)."""
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
