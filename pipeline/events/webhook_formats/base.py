"""What every webhook format renders from (an event with its message metadata) and to (a request)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from pipeline.events.sqlite import StoredEvent


@dataclass(frozen=True)
class WebhookEvent:
    """A stored event with its message's tags and metadata (looked up by queue id)."""

    stored: StoredEvent
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return (self.stored.event.recipient or "").rpartition("@")[2]

    def iso_time(self) -> str:
        """The event time as ISO 8601 UTC with a ``Z`` (Postmark's timestamps)."""
        t = datetime.datetime.fromtimestamp(self.stored.event.time, datetime.UTC)
        return t.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]
