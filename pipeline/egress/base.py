"""The common egress contract: a copy in, a per-recipient result out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Status = Literal["sent", "deferred", "bounced"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Copy:
    """One recipient's final bytes, ready for the next hop."""

    queue_id: str
    recipient: str
    mail_from: str
    data: bytes
    pool: str | None = None  # source IP pool (pipeline/egress/pools.py); None: the system's address
    #: The message's own TLS demand (``MessageContext.require_tls``): ``encrypt`` or ``verify``.
    #: An egress may only raise its level for it; a hop that cannot meet it defers the copy.
    require_tls: str | None = None
    #: Whether ``data`` holds no bare CR or LF, as :func:`pipeline.contract.headers.crlf_only` found
    #: where the bytes were made (a worker process checks its copies, off the main process's event
    #: loop); ``None``: not checked, the egress checks. Set it only from that check of these bytes.
    crlf: bool | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one copy: ``sent`` (2xx), ``deferred`` (4xx, connection trouble) or ``bounced`` (5xx)."""

    recipient: str
    status: Status
    dsn: str
    reply: str
    relay: str = "none"
    tls: str = "none"  # the TLS outcome: "none", "TLSv1.3 unverified", "TLSv1.3 verified (mta-sts)"...
    retry_at: float | None = None  # deferred: not before this (the destination is suspended or capped)
    postponed: bool = False  # deferred without an attempt (shaping held it back): no retry used up
    source: str = ""  # the local address the connection came from (an IP pool's), "" for the system's choice

    @classmethod
    def from_reply(cls, recipient: str, code: int, text: str, relay: str) -> DeliveryResult:
        """Classify an SMTP reply: 2xx sent, 4xx deferred, 5xx bounced (anything else deferred)."""
        text = " ".join(text.split())
        status: Status = "sent" if 200 <= code < 300 else "bounced" if 500 <= code < 600 else "deferred"
        return cls(recipient, status, dsn_of(code, text), f"{code} {text}".strip(), relay)

    @classmethod
    def deferred(cls, recipient: str, dsn: str, reply: str, relay: str = "none") -> DeliveryResult:
        return cls(recipient, "deferred", dsn, reply, relay)

    @classmethod
    def postpone(cls, recipient: str, until: float, reason: str) -> DeliveryResult:
        """Held back before any attempt (suspended destination, rate or daily cap): retried at ``until``."""
        return cls(recipient, "deferred", "4.7.0", reason, "none", retry_at=until, postponed=True)

    @classmethod
    def bounced(cls, recipient: str, dsn: str, reply: str, relay: str = "none") -> DeliveryResult:
        return cls(recipient, "bounced", dsn, reply, relay)


def dsn_of(code: int, text: str) -> str:
    """The enhanced status code in a reply text, else the generic ``X.0.0`` for the reply class."""
    m = _ENHANCED.match(text)
    if m and m.group(1) == str(code)[0]:
        return m.group(0)
    first = str(code)[0] if 200 <= code < 600 else "4"
    return f"{first}.0.0"


class Egress(Protocol):
    """A next hop. ``deliver`` never raises for delivery trouble: it reports it per copy."""

    name: str

    async def deliver(self, copies: Sequence[Copy]) -> list[DeliveryResult]: ...

    async def close(self) -> None: ...
