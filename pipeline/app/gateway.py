"""The composition root: one :class:`Gateway` holds the config, the plugin chain and the stores,
and ``serve()`` starts the services in data-flow order (ingress, workers and egress, tracking).

Services share one asyncio loop in the main process; CPU-heavy processing runs in worker
processes started by the processing service.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.chain.loader import PluginSet
from pipeline.chain.runner import Chain
from pipeline.config import Config
from pipeline.contract.context import Event

if TYPE_CHECKING:
    from pipeline.ingress import IngressService

log = logging.getLogger("smtpgate")


class Service(Protocol):
    """A long-running part of the gateway."""

    name: str

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class Gateway:
    """One gateway instance (tests start several side by side on ephemeral ports)."""

    def __init__(self, config: Config, extra_plugins: list[Any] | None = None) -> None:
        self.config = config
        self.plugins = PluginSet(config, extra_plugins)
        self.chain = Chain(self.plugins)
        self.services: list[Service] = []
        self._spool: Any = None
        # Domains the gateway itself receives mail for (e.g. the VERP bounce domain): the ingress
        # accepts RCPT for them without AUTH and hands the message to the handler, not the chain.
        self.inbound_handlers: dict[str, Callable[[str, list[str], bytes], Awaitable[None]]] = {}
        # Process-wide counters for /metrics; keys are "name:label" with bounded label values.
        self.counters: collections.Counter[str] = collections.Counter()
        self._events: Any = None
        if config.tracking.bounce_domain:
            from pipeline.events.inbound import InboundHandler

            self.inbound_handlers[config.tracking.bounce_domain.lower()] = InboundHandler(self)

    def build_services(self, workers: int | None = None) -> None:
        """Create the long-running services, in data-flow order. Each area adds its own line."""
        self.services = []
        self.services.append(self.ingress_service())  # SMTP listeners -> admission -> spool
        from pipeline.delivery.scheduler import DeliveryService

        self.services.append(DeliveryService(self, workers=workers))  # spool -> workers -> egress, retries
        from pipeline.tracking import tracking_services

        self.services += tracking_services(self)  # HTTP clicks/opens/unsubscribe/stats, webhook sender

    def ingress_service(self) -> IngressService:
        """The SMTP listeners, handed the ports they feed: spool, events, metrics, inbound sinks."""
        from pipeline.ingress import IngressService

        return IngressService(self.config, self.chain, spool=self.spool, events=self, metrics=self.counters,
                              inbound=self.inbound_handlers)

    @property
    def spool(self) -> Any:
        """The spool (opened on first use, so commands that don't need it don't create it)."""
        if self._spool is None:
            from pipeline.spool.sqlite import SqliteSpool

            self._spool = SqliteSpool(self.config.data_dir / "spool.db")
        return self._spool

    @property
    def events(self) -> Any:
        """The event store, ``<data_dir>/events.db`` (opened on first use, like the spool)."""
        if self._events is None:
            from pipeline.events import open_event_store

            self._events = open_event_store(self.config)
        return self._events

    async def emit(self, event: Event, *, strict: bool = False) -> None:
        """Record an event (event store, webhook outbox, suppression) and hand it to ``on_event`` plugins.

        A store failure is logged, not raised, unless ``strict`` (see ``pipeline.events.record_event``).
        """
        from pipeline.events import record_event

        await record_event(self, event, strict=strict)
        await self.chain.emit(event)

    async def start(self) -> None:
        for service in self.services:
            await service.start()
            log.info("started %s", service.name)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.limits.shutdown_grace if grace is None else grace
        # All services drain at once, so a shutdown takes at most one grace period: the ingress
        # finishes its sessions (everything it accepts is already durable in the spool) while
        # delivery finishes or hands back the messages in hand.
        results = await asyncio.gather(*(s.stop(grace) for s in self.services), return_exceptions=True)
        for service, result in zip(self.services, results, strict=True):
            if isinstance(result, BaseException):
                log.error("stopping %s failed: %s", service.name, result)
        if self._spool is not None:
            self._spool.close()
        if self._events is not None:
            self._events.close()
            self._events = None

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
