"""Events: the durable record of what happened to each copy (accepted, delivered, deferred,
bounced, expired, failed, discarded, opened, clicked, unsubscribed, complained), and what is
derived from it: statistics, webhooks and the suppression list (stoplist).

:class:`EventStore` is the interface (as :class:`~pipeline.spool.Spool` is for the spool);
:class:`~pipeline.events.sqlite.SqliteEventStore` is the embedded backend. Plugins use only
:func:`open_suppression_list`.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.contract.context import Event
from pipeline.events.machine import MachineDetector
from pipeline.events.sqlite import (
    GLOBAL_SCOPE,
    SCHEMA,
    SqliteEventStore,
    StoredEvent,
    Suppressed,
    SuppressionPolicy,
    normalize_address,
)
from pipeline.storage.sqlite import open_sqlite
from pipeline.toolkit.verp import VerpToken, parse_verp, recipient_hash, verp_local_part

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger("smtpgate.events")

EVENT_TYPES = (
    "accepted", "discarded", "delivered", "deferred", "bounced", "expired", "failed",
    "opened", "clicked", "unsubscribed", "complained",
)
"""Known event types; metrics label anything else as ``other`` so label values stay bounded."""

STOPLIST_REPLY = (550, "5.0.0", "Email is in the account stoplist")
"""Sendsay's reply to a RCPT for a suppressed address."""


class EventStore(Protocol):
    """What the gateway needs from an event store backend."""

    async def record(self, event: Event, webhook_urls: Sequence[str] = ()) -> int: ...

    def is_suppressed(self, address: str, credential: str | None = None) -> bool: ...

    def close(self) -> None: ...


def open_event_store(config: Config) -> SqliteEventStore:
    """The gateway's event store: ``<data_dir>/events.db`` with the configured suppression policy."""
    s = config.suppression
    policy = SuppressionPolicy(s.scope, s.hard_bounces, s.unsubscribes, s.complaints)
    return SqliteEventStore(config.data_dir / "events.db", policy)


class SuppressionList:
    """Read-only view of the stoplist for admission (one indexed look-up per RCPT)."""

    def __init__(self, path: Path) -> None:
        self._conn = open_sqlite(path)
        self._conn.executescript(SCHEMA)

    def contains(self, address: str, credential: str | None = None) -> bool:
        scopes = (GLOBAL_SCOPE, credential) if credential else (GLOBAL_SCOPE,)
        row = self._conn.execute(
            f"SELECT 1 FROM suppression WHERE address = ? AND scope IN ({','.join('?' * len(scopes))}) LIMIT 1",
            (normalize_address(address), *scopes),
        ).fetchone()
        return row is not None

    def close(self) -> None:
        self._conn.close()


def open_suppression_list(data_dir: Path) -> SuppressionList:
    """The stoplist of the gateway whose data directory is ``data_dir``."""
    return SuppressionList(Path(data_dir) / "events.db")


_credential_stores: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


_no_store_until: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def _stored_webhooks(gateway: Any) -> Callable[[str], list[str]] | None:
    """Webhook URLs of credentials kept in ``<data_dir>/credentials.db`` (``smtpgate credentials add``)."""
    store = _credential_stores.get(gateway)
    if store is None:
        now = time.monotonic()
        if _no_store_until.get(gateway, 0.0) > now:  # don't stat the file on every click
            return None
        path = gateway.config.data_dir / "credentials.db"
        if not path.exists():
            _no_store_until[gateway] = now + 5.0
            return None
        from pipeline.accounts.credentials import CredentialStore

        store = _credential_stores[gateway] = CredentialStore(path)

    def lookup(name: str) -> list[str]:
        return [url for rec in store.records() if rec.name == name for url in rec.section.webhooks]

    return lookup


async def record_event(gateway: Any, event: Event, *, strict: bool = False) -> int | None:
    """Store an event with its webhook deliveries and suppression, count it, wake the sender.

    A store failure is logged and ``None`` returned (a delivered message must not be retried
    because its event could not be written); ``strict=True`` raises it instead.
    """
    from pipeline.events.webhooks import WebhookSender, webhook_urls

    label = event.type if event.type in EVENT_TYPES else "other"
    gateway.counters[f"events_total:{label}"] += 1
    try:
        urls = webhook_urls(gateway.config, event.credential, _stored_webhooks(gateway))
        event_id = await gateway.events.record(event, urls)
    except Exception as exc:
        gateway.counters["event_store_errors_total"] += 1
        log.error("event %s queue_id=%s not stored: %s", event.type, event.queue_id or "-", exc)
        if strict:
            raise
        return None
    if urls:
        for service in gateway.services:
            if isinstance(service, WebhookSender):
                service.wake()
    return event_id


__all__ = [
    "EVENT_TYPES",
    "GLOBAL_SCOPE",
    "STOPLIST_REPLY",
    "EventStore",
    "MachineDetector",
    "SqliteEventStore",
    "StoredEvent",
    "Suppressed",
    "SuppressionList",
    "SuppressionPolicy",
    "VerpToken",
    "normalize_address",
    "open_event_store",
    "open_suppression_list",
    "parse_verp",
    "recipient_hash",
    "record_event",
    "verp_local_part",
]
