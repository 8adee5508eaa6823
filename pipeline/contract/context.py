"""What hooks see: the SMTP session, the transaction (envelope), the credential, and the
per-message context that travels from admission through the spool to every processing phase.

``MessageContext`` is serialisable (:meth:`MessageContext.to_record`) so the spool can hand it
to a worker process; plugins keep their own cross-phase data in ``notes`` (JSON values only).
"""

from __future__ import annotations

import copy
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.contract.message import Message
from pipeline.contract.vocabulary import CredentialKind, EventType

_ATOMIC = frozenset({str, int, float, bool, type(None)})


def _copy_state(value: dict[str, Any]) -> dict[str, Any]:
    """``copy.deepcopy(value)``, without its memo and dispatch for a flat dict of plain values (the
    usual notes and metadata, copied once per recipient copy): those values are immutable, and
    deepcopy returns such a value itself, so a new dict holding them is what it would make."""
    if type(value) is dict and all(type(k) in _ATOMIC and type(v) in _ATOMIC for k, v in value.items()):
        return dict(value)
    return copy.deepcopy(value)


def new_queue_id() -> str:
    """A short, sortable, unguessable queue id (time prefix + randomness), like Postfix's long ids."""
    alphabet = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
    t = int(time.time() * 1000)
    head = ""
    while t:
        t, r = divmod(t, len(alphabet))
        head = alphabet[r] + head
    # 8 random characters from one 64-bit draw (one getrandom call, not eight; the modulo bias
    # of 2**64 over 52**8 is below one in 300 000).
    n = int.from_bytes(secrets.token_bytes(8), "big")
    tail = ""
    for _ in range(8):
        n, r = divmod(n, len(alphabet))
        tail += alphabet[r]
    return head + tail


def _spool_session_id() -> str:
    """An id for the session a spooled message's context is rebuilt with (a worker, per message):
    the format of :class:`Session`'s own, from the process's seeded generator (it names the session
    in logs; nothing secret), not a ``getrandom`` system call per message."""
    return f"{random.getrandbits(48):012x}"


@dataclass
class Credential:
    """An authenticated (or allow-listed) client with its feature set and limits."""

    name: str
    kind: CredentialKind = CredentialKind.PASSWORD
    features: dict[str, bool] = field(default_factory=dict)
    locked: frozenset[str] = frozenset()
    sandbox: bool = False
    allowed_sender_domains: tuple[str, ...] = ()
    max_message_size: int | None = None
    max_recipients: int | None = None
    messages_per_minute: int | None = None
    egress: str | None = None
    webhooks: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "features": dict(self.features),
            "locked": sorted(self.locked),
            "sandbox": self.sandbox,
            "allowed_sender_domains": list(self.allowed_sender_domains),
            "max_message_size": self.max_message_size,
            "max_recipients": self.max_recipients,
            "messages_per_minute": self.messages_per_minute,
            "egress": self.egress,
            "webhooks": list(self.webhooks),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Credential:
        known = cls.__dataclass_fields__
        rec = {k: v for k, v in rec.items() if k in known}  # a record from an older version loads
        rec["kind"] = CredentialKind(rec.get("kind", CredentialKind.PASSWORD))
        rec["locked"] = frozenset(rec.get("locked", ()))
        rec["allowed_sender_domains"] = tuple(rec.get("allowed_sender_domains", ()))
        rec["webhooks"] = tuple(rec.get("webhooks", ()))
        return cls(**rec)


@dataclass
class Session:
    """One SMTP connection."""

    peer: tuple[str, int] = ("127.0.0.1", 0)
    listener: str = "replay"
    helo: str | None = None
    tls: bool = False
    credential: Credential | None = None
    session_id: str = field(default_factory=lambda: secrets.token_hex(6))
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def peer_ip(self) -> str:
        return self.peer[0]


@dataclass
class Transaction:
    """The envelope being built between MAIL FROM and the end of DATA."""

    mail_from: str | None = None
    rcpt_tos: list[str] = field(default_factory=list)
    mail_options: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class MessageContext:
    """A message on its way through the chain: admission ``on_message`` and every processing phase.

    In ``personalize`` and ``sign`` the context is for one recipient copy: ``recipient`` is set and
    ``message`` is that copy.
    """

    message: Message
    queue_id: str = field(default_factory=new_queue_id)
    credential: Credential | None = None
    features: dict[str, bool] = field(default_factory=dict)
    campaign_id: str | None = None
    letter_id: str | None = None
    recipient: str | None = None
    session: Session | None = None
    received_at: float = field(default_factory=time.time)
    notes: dict[str, Any] = field(default_factory=dict)
    #: Message metadata a sender attached (vendor dialects: tags, variables, unique args); stored
    #: with the message and carried on its events, statistics and webhooks.
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Deferred delivery: no copy leaves before ``not_before``; none is tried after ``deliver_by``
    #: (it expires instead). Unix seconds; ``None`` = the spool's own schedule and lifetime.
    not_before: float | None = None
    deliver_by: float | None = None
    #: TLS the message itself demands of the next hop (a dialect's require-TLS header): ``encrypt``
    #: (TLS, any certificate) or ``verify`` (verified chain and host name). It can only raise the
    #: egress's own level; a hop that cannot meet it defers the copy, never sends it in clear.
    require_tls: str | None = None

    def enabled(self, feature: str | None) -> bool:
        """Whether a feature is on for this message (``None`` means "always on")."""
        return True if feature is None else bool(self.features.get(feature, False))

    def for_recipient(self, recipient: str, *, only: bool = False) -> MessageContext:
        """The context of one recipient's copy (fan-out after ``transform``); ``only``: the one
        copy made of this message (its MIME tree is split when first needed, not to be cloned)."""
        return MessageContext(
            message=self.message.copy(rcpt_tos=[recipient], split=not only),
            queue_id=self.queue_id,
            credential=self.credential,
            features=dict(self.features),
            campaign_id=self.campaign_id,
            letter_id=self.letter_id,
            recipient=recipient,
            session=self.session,
            received_at=self.received_at,
            notes=_copy_state(self.notes),  # one recipient's plugin state must not leak to another's
            tags=list(self.tags),
            metadata=_copy_state(self.metadata),
            not_before=self.not_before,
            deliver_by=self.deliver_by,
            require_tls=self.require_tls,
        )

    def to_record(self) -> dict[str, Any]:
        """Everything but the message bytes, as JSON-ready data for the spool."""
        return {
            "queue_id": self.queue_id,
            "credential": self.credential.to_record() if self.credential else None,
            "features": dict(self.features),
            "campaign_id": self.campaign_id,
            "letter_id": self.letter_id,
            "received_at": self.received_at,
            "notes": self.notes,
            "peer": list(self.session.peer) if self.session else None,
            "tags": list(self.tags),
            "metadata": self.metadata,
            "not_before": self.not_before,
            "deliver_by": self.deliver_by,
            "require_tls": self.require_tls,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any], message: Message) -> MessageContext:
        cred = rec.get("credential")
        peer = rec.get("peer")
        return cls(
            message=message,
            queue_id=rec["queue_id"],
            credential=Credential.from_record(cred) if cred else None,
            features=dict(rec.get("features", {})),
            campaign_id=rec.get("campaign_id"),
            letter_id=rec.get("letter_id"),
            received_at=rec.get("received_at", time.time()),
            notes=dict(rec.get("notes", {})),
            session=Session(peer=(peer[0], peer[1]), listener="spool", session_id=_spool_session_id())
            if peer
            else None,
            tags=list(rec.get("tags", ())),
            metadata=dict(rec.get("metadata") or {}),
            not_before=rec.get("not_before"),
            deliver_by=rec.get("deliver_by"),
            require_tls=rec.get("require_tls"),
        )


@dataclass(frozen=True)
class Event:
    """A delivery or tracking event: what the event store, statistics and webhooks consume."""

    type: EventType | str  # the gateway's own are EventType members; metrics label any other string "other"
    queue_id: str | None = None
    recipient: str | None = None
    credential: str | None = None
    campaign_id: str | None = None
    letter_id: str | None = None
    url: str | None = None
    time: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()  # the message's tags and metadata (stored once per queue id)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "queue_id": self.queue_id,
            "recipient": self.recipient,
            "credential": self.credential,
            "campaign_id": self.campaign_id,
            "letter_id": self.letter_id,
            "url": self.url,
            "time": self.time,
            "data": self.data,
            "tags": list(self.tags),
            "metadata": self.metadata,
        }
