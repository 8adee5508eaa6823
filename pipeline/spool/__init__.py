"""The spool: where an accepted message is made durable before the client hears ``250``.

:class:`Spool` is the interface every caller uses; :class:`~pipeline.spool.sqlite.SqliteSpool`
is the embedded backend. A PostgreSQL backend implements the same methods
(``claim`` becomes ``SELECT ... FOR UPDATE SKIP LOCKED`` with the same lease column).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.contract.context import MessageContext

STATES = ("queued", "processing", "deferred", "delivered", "bounced", "expired", "failed", "discarded")
FINAL_STATES = frozenset({"delivered", "bounced", "expired", "failed", "discarded"})


@dataclass
class QueuedMessage:
    """A claimed message: its bytes, envelope, context record and the recipients now leased to us."""

    queue_id: str
    mail_from: str
    data: bytes
    context: dict[str, Any]
    created_at: float
    recipients: list[str]
    attempts: dict[str, int] = field(default_factory=dict)
    plugin_failures: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipientUpdate:
    """The outcome of one attempt for one recipient, as the spool stores it."""

    queue_id: str
    recipient: str
    state: str
    attempts: int
    next_attempt: float = 0.0
    last_reply: str | None = None
    plugin_failures: int = 0
    next_hop: str | None = None


class Spool(Protocol):
    async def enqueue(self, ctx: MessageContext, data: bytes, recipients: list[str]) -> None:
        """Commit the message durably (fsync'd) before returning; raise on failure."""
        ...

    def add_listener(self, callback: Callable[[], None]) -> None: ...

    def recover(self) -> int: ...

    def claim(
        self, limit: int, lease: float, now: float | None = None, exclude: frozenset[tuple[str, str]] = frozenset()
    ) -> list[QueuedMessage]: ...

    def next_due(self) -> float | None: ...

    async def record(self, updates: Sequence[RecipientUpdate]) -> None: ...

    def release(self, queue_id: str, recipients: Sequence[str]) -> None: ...

    def list_recipients(self) -> list[dict[str, Any]]: ...

    def show(self, queue_id: str) -> dict[str, Any] | None: ...

    def retry(self, queue_id: str | None = None) -> int: ...

    def delete(self, queue_id: str) -> bool: ...

    def close(self) -> None: ...
