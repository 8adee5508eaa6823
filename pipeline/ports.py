"""Typed ports: the small interfaces the composition root hands to each service.

A service names the port it needs (the ingress an :class:`Authenticator`, a :class:`SpoolWriter`
and an :class:`EventSink`; delivery a :class:`Spool` and an :class:`EventSink`; tracking a
:class:`TokenVerifier` and an :class:`EventSink`) instead of reaching through the whole gateway.
Backends (SQLite today, PostgreSQL later) implement them; tests hand in fakes or the real thing.
This module sits just above the contract, so every stage may import it and none imports another
stage to get at an interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pipeline.contract.context import Credential, Event, MessageContext

InboundHandler = Callable[[str, list[str], bytes], Awaitable[None]]
"""A sink for mail the gateway receives itself (``mail_from, recipients, data``), e.g. VERP bounces."""


class Metrics(Protocol):
    """Process-wide counters for ``/metrics``; keys are ``name`` or ``name:label`` (bounded labels)."""

    def __getitem__(self, key: str) -> int: ...

    def __setitem__(self, key: str, value: int) -> None: ...


class EventSink(Protocol):
    """Where a stage reports what happened (event store, webhook outbox, suppression, ``on_event``)."""

    async def emit(self, event: Event, *, strict: bool = False) -> None: ...


class SpoolWriter(Protocol):
    """The one thing the ingress needs from the spool: make an accepted message durable."""

    async def enqueue(self, ctx: MessageContext, data: bytes, recipients: list[str]) -> None:
        """Commit the message durably (fsync'd) before returning; raise on failure."""
        ...


class SuppressionList(Protocol):
    """Read-only view of the stoplist (one indexed look-up per RCPT)."""

    def contains(self, address: str, credential: str | None = None) -> bool: ...


class TokenSigner(Protocol):
    """Signs and verifies the opaque tokens in tracked links, pixels and VERP addresses."""

    def sign(self, payload: dict[str, Any]) -> str: ...

    def verify(self, token: str) -> dict[str, Any] | None: ...


class AuthResult(Protocol):
    """The result of one AUTH attempt: ``credential`` on success, else ``reason`` (never the secret)."""

    @property
    def credential(self) -> Credential | None: ...

    @property
    def reason(self) -> str: ...

    @property
    def name(self) -> str | None: ...


class Authenticator(Protocol):
    """Verifies SMTP AUTH secrets and client addresses against the credentials."""

    async def authenticate(self, login: str, password: str) -> AuthResult: ...

    def match_ip(self, ip: str) -> Credential | None: ...
