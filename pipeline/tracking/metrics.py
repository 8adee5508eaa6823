"""``/metrics`` with ``prometheus_client``: one registry per gateway (tests run several at once).

:class:`GatewayMetrics` is the gateway's :class:`pipeline.ports.Metrics`: stages count with
``metrics["name:label|label"] += 1`` (bounded label values: event types, handler names, status
codes, never a campaign, recipient or URL) and time with ``metrics.observe(name, seconds,
**labels)``. Queue depth, oldest message, open sessions and store figures are read when scraped.

Worker processes do not export metrics of their own: they return what they measured (each
plugin call's duration) with their result and the main process observes it here, so one
scrape of one process sees everything, with no multiprocess files to clean up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from pipeline.events import EVENT_TYPES
from pipeline.ports import EventStore
from pipeline.storage.health import DatabaseHealth


class WebhookStats(Protocol):
    """What ``/metrics`` reads from a webhook sender: POSTs of this process, by result."""

    @property
    def sent(self) -> int: ...

    @property
    def failures(self) -> int: ...


# counter name (as counted) -> (label names, help)
COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "events_total": (("type",), "Events emitted by this process, by type: messages accepted, delivered, "
                                "deferred, bounced (per recipient), opens, clicks ..."),
    "event_store_errors_total": ((), "Events that could not be written to the event store."),
    "http_requests_total": (("handler", "status"), "Tracking HTTP requests, by handler and status."),
    "clicks_total": (("result",), "Click requests that were not recorded, by reason."),
    "opens_total": (("result",), "Pixel requests that were not recorded, by reason."),
    "inbound_total": (("result",), "Mail to the bounce domain, by outcome."),
    "egress_connections_total": (("site",), "SMTP connections opened by direct delivery, by destination site."),
    "egress_suspensions_total": (("site",), "Destinations suspended after a throttling reply, by site."),
    "egress_postponed_total": (("site",), "Copies held back by shaping (suspended or over a rate), by site."),
    "egress_tls_total": (("outcome",), "Copies handed over by direct delivery, by TLS outcome."),
    "egress_tls_failures_total": (("policy",), "Deliveries TLS policy deferred or reported, by policy."),
    "smtp_connections_total": (("result",), "SMTP connections, accepted or refused (limits, shutdown)."),
    "smtp_auth_failures_total": ((), "Failed SMTP AUTH attempts."),
    "accept_total": (("status",), "End-of-DATA outcomes of the ingress, by status."),
    "smtp_refusals_total": (("code",), "SMTP 4xx/5xx replies sent, by reply code."),
    "rejected_events_total": (("result",), "Refusals (SMTP and the HTTP send API) as rejected events: stored, "
                                           "aggregated into a later event's count, dropped (too many kinds)."),
    "api_auth_failures_total": (("result",), "Management API requests refused for their token (invalid, throttled)."),
    "event_backlog_total": (("source", "result"), "Events the event store did not take while the database was away "
                                                  "(source: tracking clicks and opens, other events): held in memory, "
                                                  "written later, or dropped (backlog full, or still held at shutdown)."),
}
# histogram name -> (label names, help, buckets in seconds)
HISTOGRAMS: dict[str, tuple[tuple[str, ...], str, tuple[float, ...]]] = {
    "delivery_latency_seconds": ((), "Seconds from acceptance (250 at DATA) to delivered, per recipient.",
                                 (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)),
    "plugin_latency_seconds": (("phase", "plugin"), "Seconds per plugin hook call, by phase and plugin.",
                               (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)),
    "store_commit_seconds": (("store",), "Seconds per durable (fsync'd) commit of accepted messages.",
                             (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)),
}


class GatewayMetrics:
    """The gateway's metrics: a dict-like counter interface over prometheus_client objects."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._values: dict[str, int] = {}
        self._counters: dict[str, Counter] = {}
        # key -> the counter (labelled child) it increments: prometheus_client's labels() takes a
        # lock and validates the label values on every call, and counting is per message
        self._children: dict[str, Any] = {}
        # (histogram, its label items) -> the labelled child it observes (see observe)
        self._observed: dict[tuple[Any, ...], Any] = {}
        self._histograms = {
            name: Histogram(f"smtpgate_{name}", text, labels, registry=self.registry, buckets=buckets)
            for name, (labels, text, buckets) in HISTOGRAMS.items()
        }

    def _counter(self, name: str) -> Counter:
        counter = self._counters.get(name)
        if counter is None:
            labels, text = COUNTERS.get(name, (("label",), f"{name} (counter)."))
            counter = Counter(f"smtpgate_{name}", text, labels, registry=self.registry)
            self._counters[name] = counter
        return counter

    def __getitem__(self, key: str) -> int:
        return self._values.get(key, 0)

    def __setitem__(self, key: str, value: int) -> None:
        """``metrics[key] += n`` increments the counter ``key`` names by ``n`` (counters never go down)."""
        delta = value - self._values.get(key, 0)
        if delta < 0:
            raise ValueError(f"counter {key} cannot decrease")
        self._values[key] = value
        child = self._children.get(key)
        if child is None:
            name, _, label = key.partition(":")
            counter = self._counter(name)
            child = counter.labels(*label.split("|")) if label else counter
            self._children[key] = child
        child.inc(delta)

    def keys(self) -> Iterable[str]:
        return list(self._values)

    def get(self, key: str, default: int = 0) -> int:
        return self._values.get(key, default)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """One observation of the histogram ``name`` (see :data:`HISTOGRAMS`).

        Why the labelled child is kept (issue 17, main process per message): ``labels()`` takes a
        lock and validates and converts every label value on each call, and every message observes
        each processing plugin's time (as counting keeps its children: :meth:`__setitem__`)."""
        if not labels:
            self._histograms[name].observe(seconds)
            return
        key = (name, *labels.items())
        child = self._observed.get(key)
        if child is None:
            child = self._observed[key] = self._histograms[name].labels(**labels)
        child.observe(seconds)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class GatewayCollector(Collector):
    """Figures read at scrape time: the queue, open sessions, the event store, the webhook outbox."""

    def __init__(
        self,
        spool: Callable[[], object],
        events: Callable[[], EventStore],
        services: Callable[[], Sequence[object]],
        health: DatabaseHealth | None = None,
        held: Callable[[], dict[str, int]] = dict,
    ) -> None:
        # Callables, not the stores: registering must not open them (read commands create nothing).
        self._spool, self._events, self._services = spool, events, services
        self._health = health  # the shared database's, when [storage] url is set
        self._held = held  # events held in memory while the database is away, by source (besides tracking)

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # registering must not open the spool or the event store (read commands create nothing)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        held = {"tracking": 0, **self._held()}
        for service in self._services():
            if getattr(service, "name", "") == "ingress":
                yield GaugeMetricFamily("smtpgate_smtp_sessions_open", "SMTP sessions open now.",
                                        value=len(getattr(service, "sessions", ())))
            if getattr(service, "name", "") == "webhooks":
                g = GaugeMetricFamily("smtpgate_webhook_attempts", "Webhook POSTs by this process, by result.",
                                      labels=["result"])
                g.add_metric(["ok"], getattr(service, "sent", 0))
                g.add_metric(["error"], getattr(service, "failures", 0))
                yield g
            if getattr(service, "name", "") == "tracking":
                held["tracking"] = held.get("tracking", 0) + int(getattr(service, "backlog", 0))
        g = GaugeMetricFamily("smtpgate_event_backlog_events", "Events held in memory until the event store takes "
                              "them (the database is away), by source.", labels=["source"])
        for source, n in sorted(held.items()):
            g.add_metric([source], n)
        yield g
        if self._health is not None and not self._health.up:
            return  # the database is away: /metrics answers now with what this process knows
        try:
            yield from self._stored()
        except Exception:  # a scrape must not fail (or wait) because the database does
            return

    def _stored(self) -> Iterator[GaugeMetricFamily]:
        """Figures read from the spool and the event store (skipped while the database is away)."""
        spool: Any = self._spool()
        by_state, oldest = spool.queue_summary() if hasattr(spool, "queue_summary") else ({}, None)
        families = []
        g = GaugeMetricFamily("smtpgate_queue_recipients", "Recipients in the queue, by state.", labels=["state"])
        for state in sorted({"queued", "processing", "deferred", *by_state}):
            g.add_metric([state], by_state.get(state, 0))
        families.append(g)
        families.append(GaugeMetricFamily("smtpgate_queue_oldest_age_seconds",
                                          "Age of the oldest message still queued (0: none).",
                                          value=max(0.0, time.time() - oldest) if oldest else 0.0))
        store = self._events()
        stored: dict[str, int] = {}
        for type_, n in store.counts_by_type().items():
            label = type_ if type_ in EVENT_TYPES else "other"
            stored[label] = stored.get(label, 0) + n
        g = GaugeMetricFamily("smtpgate_stored_events", "Events in the event store, by type.", labels=["type"])
        for type_, n in sorted(stored.items()):
            g.add_metric([type_], n)
        families.append(g)
        counts = store.webhook_counts()
        g = GaugeMetricFamily("smtpgate_webhook_outbox", "Webhook deliveries by state.", labels=["state"])
        for state in ("pending", "delivered", "dead"):
            g.add_metric([state], counts.get(state, 0))
        families.append(g)
        families.append(GaugeMetricFamily("smtpgate_suppressed_addresses", "Addresses on the stoplist (all scopes).",
                                          value=store.suppressed_count()))
        yield from families  # all or nothing: a half-read scrape would look like a drop to zero


class DatabaseCollector(Collector):
    """The shared database as this process sees it (:mod:`pipeline.storage.health`): up or down,
    pools, errors by operation, operation latency. Read from memory: a scrape never touches the database."""

    def __init__(self, health: DatabaseHealth) -> None:
        self.health = health

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[Any]:
        h = self.health
        yield GaugeMetricFamily("smtpgate_db_up", "1 while the database answers, 0 from the first failed connection "
                                "until the next success.", value=1 if h.up else 0)
        yield GaugeMetricFamily("smtpgate_db_down_seconds", "Seconds since the database stopped answering (0: up).",
                                value=0.0 if h.up else max(0.0, time.time() - h.down_since))
        size = GaugeMetricFamily("smtpgate_db_pool_connections", "Pooled connections, by pool (store) and state.",
                                 labels=["pool", "state"])
        waiting = GaugeMetricFamily("smtpgate_db_pool_waiting", "Callers waiting for a pooled connection, by pool.",
                                    labels=["pool"])
        totals: dict[tuple[str, str], int] = {}
        waits: dict[str, int] = {}
        for pool in list(h.pools):
            try:
                stats = pool.get_stats()
            except Exception:  # a pool closing during the scrape
                continue
            name = str(pool.name)
            for state, key in (("open", "pool_size"), ("idle", "pool_available"), ("max", "pool_max")):
                totals[(name, state)] = totals.get((name, state), 0) + int(stats.get(key, 0))
            waits[name] = waits.get(name, 0) + int(stats.get("requests_waiting", 0))
        for (name, state), n in sorted(totals.items()):
            size.add_metric([name, state], n)
        for name, n in sorted(waits.items()):
            waiting.add_metric([name], n)
        yield size
        yield waiting
        yield from h.registry.collect()


def render_metrics(metrics: object, accept: str | None = None) -> tuple[bytes, str]:
    """(exposition body, content type) in the format the scraper's ``Accept`` header asks for.

    Called in a thread (the gateway's collector reads the spool and the event store).
    """
    if not isinstance(metrics, GatewayMetrics):  # a plain counter (a service built alone in a test)
        plain, metrics = metrics, GatewayMetrics()
        for key in getattr(plain, "keys", lambda: [])():
            metrics[key] = int(plain[key])  # type: ignore[index]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(metrics.registry), content_type
