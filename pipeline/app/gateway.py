"""The composition root: one :class:`Gateway` holds the config, the plugin chain and the stores,
and ``serve()`` starts the services in data-flow order (ingress, workers and egress, tracking).

Services share one asyncio loop in the main process; CPU-heavy processing runs in worker
processes started by the processing service.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from pipeline.accounts.api_tokens import open_api_token_store
from pipeline.accounts.authenticator import Authenticator
from pipeline.accounts.store import CredentialStore, StoredWebhooks, open_credential_store
from pipeline.accounts.webhook_endpoints import WebhookEndpointStore
from pipeline.api import ApiPorts, ApiService, api_service
from pipeline.api.console import ConsolePorts
from pipeline.api.domains import DomainSettings, domain_settings
from pipeline.api.send import SendPorts
from pipeline.api.webhooks import WebhookSettings
from pipeline.chain.accept import AcceptStep
from pipeline.chain.loader import PluginSet
from pipeline.chain.runner import Chain
from pipeline.config import Config
from pipeline.contract.context import Credential, Event
from pipeline.contract.vocabulary import PluginSource
from pipeline.delivery.notices import BounceNotices, notice_features
from pipeline.delivery.results import JointAccepts, JointResults, OutboxAccepts, OutboxResults
from pipeline.delivery.scheduler import DeliveryService
from pipeline.delivery.workers import SpoolSource
from pipeline.egress.resolver import Resolver
from pipeline.events import EventEmitter, open_event_store, open_message_log, open_suppression_list
from pipeline.events.backlog import EventBacklog
from pipeline.events.inbound import InboundHandler
from pipeline.events.refusals import RefusalEvents
from pipeline.events.sqlite import SqliteEventStore
from pipeline.events.store import EventStoreBase
from pipeline.events.webhooks import load_webhook_secret
from pipeline.ingress import IngressService
from pipeline.ingress.limits import SlidingWindow
from pipeline.milter import milter_services
from pipeline.ports import InboundHandler as InboundPort
from pipeline.spool import Spool, open_spool
from pipeline.spool.sqlite import SqliteSpool
from pipeline.storage.health import DatabaseHealth, health_of
from pipeline.tracking import TrackingService, tracking_services
from pipeline.tracking.metrics import DatabaseCollector, GatewayCollector, GatewayMetrics

if TYPE_CHECKING:  # their modules load psycopg: imported by whoever opens a PostgreSQL store, never here
    from pipeline.events.postgres import PostgresEventStore
    from pipeline.spool.postgres import PostgresSpool

log = logging.getLogger("smtpgate")


def _one_postgres(spool: Spool, events: EventStoreBase) -> tuple[PostgresSpool, PostgresEventStore] | None:
    """The spool and the event store when both are in one PostgreSQL database, else ``None``.

    Their classes are looked up in ``sys.modules``, not imported: importing them loads psycopg
    (about 12 MiB), and a PostgreSQL store can only exist once its module was imported by
    whoever opened it (:func:`pipeline.spool.open_spool`), so a SQLite gateway never loads it.
    """
    spools, stores = sys.modules.get("pipeline.spool.postgres"), sys.modules.get("pipeline.events.postgres")
    if spools is None or stores is None:
        return None
    if isinstance(spool, spools.PostgresSpool) and isinstance(events, stores.PostgresEventStore) \
            and spool.url == events.url:
        return cast("PostgresSpool", spool), cast("PostgresEventStore", events)
    return None


class Service(Protocol):
    """A long-running part of the gateway."""

    name: str

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class Gateway:
    """One gateway instance (tests start several side by side on ephemeral ports).

    The composition root: it owns the config, the plugin chain, the stores and the counters, and
    hands each service only the ports it needs (:mod:`pipeline.ports`); no service sees the gateway.
    """

    def __init__(self, config: Config, extra_plugins: list[Any] | None = None) -> None:
        self.config = config
        self.plugins = PluginSet(
            config, extra_plugins, open_suppression=lambda: open_suppression_list(config)
        )
        self.chain = Chain(self.plugins)
        self.services: list[Service] = []
        # Process-wide metrics for /metrics: counters keyed "name:label" with bounded label
        # values, histograms, and the figures read when scraped (pipeline/tracking/metrics.py).
        self.counters = GatewayMetrics()
        # the shared database's health (pipeline/storage/health.py): up/down, pools, errors, latency
        self.database = health_of(config.storage.url) if config.storage.url else None
        self.counters.add_collector(GatewayCollector(
            lambda: self.spool, lambda: self.events, lambda: self.services, self.database,
            lambda: {"other": len(self._emitter.backlog or ()) if self._emitter is not None else 0}))
        if self.database is not None:
            self.counters.add_collector(DatabaseCollector(self.database))
        self._spool: Spool | None = None
        self._events: EventStoreBase | None = None
        self._emitter: EventEmitter | None = None
        self._inbound: dict[str, InboundPort] | None = None
        self._stored_webhooks = StoredWebhooks(config.data_dir / "credentials.db", config.storage.url)
        # webhook endpoints added over the API (credentials.db, or [storage] url's table), opened on first use
        self.webhook_endpoints = (WebhookEndpointStore(url=config.storage.url) if config.storage.url
                                  else WebhookEndpointStore(config.data_dir / "credentials.db"))
        self._closers: list[Callable[[], None]] = []  # stores opened for one service (the API's)
        self.sent = SlidingWindow(60.0)  # messages per credential per minute: SMTP and the HTTP send API alike
        self._refusals: RefusalEvents | None = None
        self._outbox: OutboxResults | None = None  # spool.db's event outbox forwarder (SQLite files)

    # -- stores and ports (opened on first use, so commands that don't need them don't create them)

    def ingress_service(self) -> IngressService:
        """The SMTP listeners, handed the ports they feed: spool, events, metrics, inbound sinks."""
        return IngressService(self.config, self.chain, spool=self.spool, events=self.event_sink,
                              metrics=self.counters, inbound=self.inbound_handlers, sent=self.sent,
                              refusals=self.refusals, recorder=self.joint_accepts())

    @property
    def spool(self) -> Spool:
        """The spool: ``[storage] url``'s PostgreSQL, else ``<data_dir>/spool.db``."""
        if self._spool is None:
            self._spool = open_spool(self.config)
            if isinstance(self._spool, SqliteSpool):
                self._spool.commit_observer = lambda seconds: self.counters.observe(
                    "store_commit_seconds", seconds, store="spool")
        return self._spool

    @property
    def events(self) -> EventStoreBase:
        """The event store: ``[storage] url``'s PostgreSQL, else ``<data_dir>/events.db``."""
        if self._events is None:
            self._events = open_event_store(self.config)
        return self._events

    @property
    def event_sink(self) -> EventEmitter:
        """The :class:`~pipeline.ports.EventSink` every stage reports to (store, webhooks, ``on_event``)."""
        if self._emitter is None:
            self._emitter = EventEmitter(
                self.events, self.config, self.counters, credential_webhooks=self._stored_webhooks,
                api_webhooks=self.webhook_endpoints.urls_for,
                # both sources read credentials.db (SQLite): its commit stamp guards their cached answers
                webhooks_stamp=self._stored_webhooks.stamp,
                # decided once: a chain without on_event hooks is not called for each event (the
                # emitter would copy every event without its summary for nobody: 4.7 us an event)
                after=self.chain.emit if self.chain.calls("on_event") else None,
            )
            self._emitter.backlog = EventBacklog(self._emitter, self.counters, "other")
        return self._emitter

    @property
    def refusals(self) -> RefusalEvents:
        """Refusals (SMTP replies 4xx/5xx, HTTP send refusals) as aggregated ``rejected`` events."""
        if self._refusals is None:
            self._refusals = RefusalEvents(self.event_sink, self.counters)
        return self._refusals

    async def emit(self, event: Event, *, strict: bool = False) -> None:
        """Record an event (event store, webhook outbox, suppression) and hand it to ``on_event`` plugins.

        A store failure is logged, not raised, unless ``strict`` (see :class:`pipeline.events.EventEmitter`).
        """
        await self.event_sink.emit(event, strict=strict)

    @property
    def inbound_handlers(self) -> dict[str, InboundPort]:
        """Domains the gateway itself receives mail for (the VERP bounce domain): the ingress
        accepts RCPT for them without AUTH and hands the message to the handler, not the chain."""
        if self._inbound is None:
            self._inbound = {}
            domain = self.config.tracking.bounce_domain
            if domain:
                handler = InboundHandler(self.config, self.events, self.event_sink, self.counters)
                self._inbound[domain.lower()] = handler
        return self._inbound

    # -- services, each on its ports

    def delivery_service(
        self, workers: int | None = None, resolver: Resolver | None = None, clock: Callable[[], float] = time.time
    ) -> DeliveryService:
        """spool -> workers -> egress, retries, bounce notices."""
        bounce_domain = self.config.tracking.bounce_domain
        notices = BounceNotices(
            self.config, self.spool, self.event_sink, notice_features(self.config, self.plugins.plugins),
            own_domains=[bounce_domain] if bounce_domain else [], recorder=self.joint_accepts(),
        )
        extra = [type(p.instance) for p in self.plugins.plugins if p.origin is PluginSource.GIVEN]
        service = DeliveryService(
            self.config, self.spool, self.event_sink, self.chain, notices,
            extra_plugins=extra, workers=workers, resolver=resolver, clock=clock, metrics=self.counters,
            results=self.joint_results(),
        )
        service.pool.source = self.spool_source()
        return service

    def spool_source(self) -> SpoolSource | None:
        """Where worker processes read message bytes themselves (so 55 KB are not pickled to them)."""
        spool = self.spool
        if isinstance(spool, SqliteSpool):
            return SpoolSource("sqlite", str(spool.path))
        spools = sys.modules.get("pipeline.spool.postgres")  # not imported here: see _one_postgres
        if spools is not None and isinstance(spool, spools.PostgresSpool):
            return SpoolSource("postgres", spool.url)
        return None  # another Spool: the bytes go through the pipe

    def joint_results(self) -> JointResults | OutboxResults | None:
        """Results and their events in one transaction (issue 11 point 3): in the one PostgreSQL
        database, or through spool.db's event outbox for the SQLite files."""
        spool, events = self.spool, self.events
        shared = _one_postgres(spool, events)
        if shared is not None:
            return JointResults(*shared, self.event_sink)
        return self._sqlite_outbox()

    def joint_accepts(self, *, stored: bool = False) -> JointAccepts | OutboxAccepts | None:
        """A message and its ``accepted`` events in one transaction: the shared PostgreSQL database's,
        or spool.db's (its event outbox, forwarded to events.db after the reply; ``stored``: before
        the enqueue returns, for the HTTP send API)."""
        shared = _one_postgres(self.spool, self.events)
        if shared is not None:
            return JointAccepts(*shared, self.event_sink)
        outbox = self._sqlite_outbox()
        return outbox.accepts(wait=stored) if outbox is not None else None

    def _sqlite_outbox(self) -> OutboxResults | None:
        """The one forwarder of spool.db's event outbox (results, accepts and notices share it)."""
        spool, events = self.spool, self.events
        if self._outbox is None and isinstance(spool, SqliteSpool) and isinstance(events, SqliteEventStore):
            self._outbox = OutboxResults(spool, events, self.event_sink)
        return self._outbox

    def tracking_services(self, host: str | None = None, port: int | None = None) -> list[Service]:
        """The tracking HTTP service (clicks, opens, unsubscribe, stats) and the webhook sender."""
        database: DatabaseHealth | None = self.database
        tracking, sender = tracking_services(self.config, self.event_sink, self.events, self.counters,
                                             host=host, port=port,
                                             database_up=(lambda: database.up) if database else (lambda: True))
        sender.endpoint_secret = self.webhook_endpoints.secret_for  # API endpoints sign with their own secret
        self.event_sink.webhook_senders.append(sender)
        return [tracking, sender]

    def tracking_service(self, host: str | None = None, port: int | None = None) -> TrackingService:
        """The tracking HTTP service alone (tests, benchmarks)."""
        service = self.tracking_services(host, port)[0]
        assert isinstance(service, TrackingService)
        return service

    def api_service(self, host: str | None = None, port: int | None = None) -> ApiService:
        """The management API on its own listener: bearer tokens and credentials from ``credentials.db``,
        the message log (``events.db`` on its own read connection, or the shared PostgreSQL through the
        event store), the event store (statistics, the stoplist), the spool for messages still queued."""
        store = self.events  # opened first: it creates events.db's tables the message log reads
        tokens = open_api_token_store(self.config.storage.url, self.config.data_dir)
        message_log = open_message_log(self.config, store)
        credentials = open_credential_store(self.config)  # [storage] url's shared table, else credentials.db
        self._closers += [tokens.close, message_log.close, credentials.close]
        declared = [{k: getattr(c, k) for k in ("name", "kind", "username", "disabled", "sandbox", "features",
                                                "locked", "allowed_sender_domains", "max_message_size",
                                                "max_recipients", "messages_per_minute", "webhooks")}
                    for c in self.config.credentials]
        ports = ApiPorts(tokens=tokens, log=message_log, spool=self.spool, events=self.event_sink, store=store,
                         suppressions=store, credentials=credentials, metrics=self.counters,
                         declared_credentials=declared, global_webhooks=list(self.config.webhooks.urls),
                         console=ConsolePorts(tokens=tokens) if self.config.api.console
                         else None,
                         send=self._send_ports(credentials),
                         webhook_endpoints=self.webhook_endpoints, webhook_settings=self._webhook_settings(),
                         domains=self._domain_settings())
        return api_service(self.config, ports, host=host, port=port)

    def _webhook_settings(self) -> WebhookSettings:
        """The config file's webhook endpoints and the signing secret, for the API's webhook handlers."""
        w = self.config.webhooks
        declared = [{"url": e.url, "credential": e.credential, "events": list(e.events), "format": e.format}
                    for e in w.endpoints]
        d = self.config.dns
        return WebhookSettings(declared, load_webhook_secret(self.config), min(w.timeout, 10.0),
                               self.config.api.tenant_webhook_private, list(d.nameservers), d.port, min(d.timeout, 5.0),
                               self.events.cancel_webhooks)

    def _domain_settings(self) -> DomainSettings:
        """The DKIM domains and what their DNS records name, for the API's domain handlers."""
        c = self.config
        return domain_settings(c.plugins.get("dkim_sign", {}), signing="dkim_sign" in c.chain.plugins,
                               hostname=c.gateway.hostname, bounce_domain=c.tracking.bounce_domain,
                               data_dir=c.data_dir, nameservers=c.dns.nameservers, port=c.dns.port,
                               timeout=c.dns.timeout)

    def _send_ports(self, credentials: CredentialStore) -> SendPorts:
        """The HTTP send API's ports: its own accept step on the shared spool and event sink, the
        credentials of the config file and ``credentials.db`` by name, the shared rate window."""
        authenticator = Authenticator(self.config, credentials)

        def credential(name: str) -> tuple[Credential | None, bool]:
            for record in authenticator.records():
                if record.name == name:
                    return record.credential(), record.disabled
            return None, False

        # the bounce domain's handlers only so a send to them is refused: mail to them is not for sending
        accept = AcceptStep(self.config, self.chain, self.spool, self.event_sink, metrics=self.counters,
                            inbound=self.inbound_handlers, recorder=self.joint_accepts(stored=True))
        return SendPorts(accept=accept, chain=self.chain, credential=credential, sent=self.sent,
                         limits=self.config.limits, on_refusal=self.refusals.note, gateway=self.config.gateway)

    def build_services(self, workers: int | None = None) -> None:
        """Create the long-running services, in data-flow order. Each area adds its own line."""
        self.services = []
        self.services.append(self.ingress_service())  # SMTP listeners -> admission -> spool
        self.services.append(self.delivery_service(workers))  # spool -> workers -> egress, retries
        self.services += self.tracking_services()  # HTTP clicks/opens/unsubscribe/stats, webhook sender
        self.services += milter_services(self.config, self.chain, self.refusals)  # [milter] listen: the chain as an MTA's milter
        self.services.append(self.api_service())  # /api/v1: the message log behind bearer tokens

    # -- lifecycle

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
        if self._refusals is not None:  # the last windows' counts, before the event store closes
            await self._refusals.aclose()
            self._refusals = None
        if self._emitter is not None and self._emitter.backlog is not None:
            await self._emitter.backlog.close()  # what the database never took is logged as lost
        if self._outbox is not None:  # spool.db's event outbox into events.db, before both close
            await self._outbox.close()
            self._outbox = None
        if self._spool is not None:
            self._spool.close()
        if self._events is not None:
            self._events.close()
            self._events = None
            self._emitter = None
            self._inbound = None
        self._stored_webhooks.close()
        self.webhook_endpoints.close()
        for close in self._closers:
            close()
        self._closers = []

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
