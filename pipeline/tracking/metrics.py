"""``/metrics`` in the Prometheus text format. Label values come from fixed sets (event types,
handler names, HTTP status codes, outbox states): never a campaign, recipient or URL, which
would make the number of series unbounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.events import EVENT_TYPES
from pipeline.ports import EventStore


class WebhookStats(Protocol):
    """What ``/metrics`` reads from a webhook sender: POSTs of this process, by result."""

    @property
    def sent(self) -> int: ...

    @property
    def failures(self) -> int: ...


# counter name in the gateway's Metrics port -> (label names, help)
_COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "events_total": (("type",), "Events emitted by this process, by type."),
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
}


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=False)) + "}"


def render_metrics(store: EventStore, counters: dict[str, int], webhooks: Sequence[WebhookStats] = ()) -> str:
    """Counters of this process plus gauges read from the event store.

    Called in a thread: pass a snapshot of the counters taken on the event loop, which keeps
    changing them.
    """
    lines: list[str] = []
    grouped: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for key, value in sorted(counters.items()):
        name, _, label = key.partition(":")
        grouped.setdefault(name, []).append((tuple(label.split("|")) if label else (), int(value)))
    for name, series in grouped.items():
        label_names, help_text = _COUNTERS.get(name, (("label",), f"{name} (counter)."))
        metric = f"smtpgate_{name}" if name.endswith("_total") else f"smtpgate_{name}_total"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        for values, n in series:
            lines.append(f"{metric}{_labels(label_names if values else (), values)} {n}")
    for service in webhooks:
        lines += [
            "# HELP smtpgate_webhook_attempts_total Webhook POSTs by this process, by result.",
            "# TYPE smtpgate_webhook_attempts_total counter",
            f'smtpgate_webhook_attempts_total{{result="ok"}} {service.sent}',
            f'smtpgate_webhook_attempts_total{{result="error"}} {service.failures}',
        ]
    stored: dict[str, int] = {}
    for type_, n in store.counts_by_type().items():
        label = type_ if type_ in EVENT_TYPES else "other"
        stored[label] = stored.get(label, 0) + n
    lines += ["# HELP smtpgate_stored_events Events in the event store, by type.", "# TYPE smtpgate_stored_events gauge"]
    lines += [f'smtpgate_stored_events{{type="{t}"}} {n}' for t, n in sorted(stored.items())]
    lines += ["# HELP smtpgate_webhook_outbox Webhook deliveries by state.", "# TYPE smtpgate_webhook_outbox gauge"]
    counts = store.webhook_counts()
    lines += [f'smtpgate_webhook_outbox{{state="{s}"}} {counts.get(s, 0)}' for s in ("pending", "delivered", "dead")]
    lines += [
        "# HELP smtpgate_suppressed_addresses Addresses on the stoplist (all scopes).",
        "# TYPE smtpgate_suppressed_addresses gauge",
        f"smtpgate_suppressed_addresses {store.suppressed_count()}",
    ]
    return "\n".join(lines) + "\n"
