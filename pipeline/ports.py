"""Typed ports: the small interfaces the composition root hands to each service.

A service names the port it needs (the ingress an :class:`Authenticator`, a :class:`SpoolWriter`
and an :class:`EventSink`; delivery a :class:`Spool` and an :class:`EventSink`; tracking an
:class:`EventStore`, an :class:`EventSink` and :class:`Metrics`) instead of reaching through the
whole gateway. :class:`RecipientOutcome` is the one record of one recipient's result.
Backends (SQLite today, PostgreSQL later) implement them; tests hand in fakes or the real thing.
This module sits just above the contract, so every stage may import it and none imports another
stage to get at an interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.contract.context import Credential, Event, MessageContext

# The two ports a plugin gets through its environment are defined with the plugin contract.
from pipeline.contract.plugin import SuppressionList as SuppressionList
from pipeline.contract.plugin import TokenSigner as TokenSigner
from pipeline.contract.vocabulary import RecipientState

InboundHandler = Callable[[str, list[str], bytes], Awaitable[None]]
"""A sink for mail the gateway receives itself (``mail_from, recipients, data``), e.g. VERP bounces."""


class Metrics(Protocol):
    """Process-wide counters for ``/metrics``; keys are ``name`` or ``name:label`` (bounded labels)."""

    def __getitem__(self, key: str) -> int: ...

    def __setitem__(self, key: str, value: int) -> None: ...

    def keys(self) -> Iterable[str]: ...


class LatencyMetrics(Metrics, Protocol):
    """Counters plus latency histograms (``delivery_latency_seconds``, ``plugin_latency_seconds`` ...)."""

    def observe(self, name: str, seconds: float, **labels: str) -> None: ...


class EventSink(Protocol):
    """Where a stage reports what happened (event store, webhook outbox, suppression, ``on_event``)."""

    async def emit(self, event: Event, *, strict: bool = False, origin: str | None = None) -> None:
        """``strict``: raise a store failure (else logged); ``origin``: a unique key, so a retried
        write (its first reply lost) stores the event once."""
        ...


class SpoolWriter(Protocol):
    """The one thing the ingress needs from the spool: make an accepted message durable."""

    async def enqueue(self, ctx: MessageContext, data: bytes, recipients: list[str], *, inline: bool = False) -> None:
        """Commit the message durably (fsync'd) before returning; raise on failure. ``inline``: the
        caller is the only one waiting on its event loop (one SMTP session open), so a store may
        commit on the caller's thread rather than hand the write to a thread of its own."""
        ...


class AcceptRecorder(Protocol):
    """Makes an accepted message durable together with its ``accepted`` events, in one transaction
    (issue 11 point 3 at acceptance: a crash right after the ``250`` cannot lose the event or the
    message log's row). The composition root hands one to the accept step when the spool and the
    event store share a database (PostgreSQL); otherwise the spool commits, then the events."""

    async def enqueue(
        self, ctx: MessageContext, data: bytes, recipients: list[str], events: Sequence[Event], *, inline: bool = False
    ) -> None:
        """Commit message and events before returning; raise on failure (nothing was committed).
        ``inline``: as :meth:`SpoolWriter.enqueue`'s."""
        ...

    async def committed(self, event: Event) -> None:
        """After the reply: what the event sink does after its own write (count, wake webhooks,
        ``on_event``), for an event :meth:`enqueue` already wrote."""
        ...


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
class RecipientOutcome:
    """One recipient's result of one delivery attempt: the one record the scheduler decides, the
    spool stores (``state``, counters, ``last_reply``, ``next_hop``), the bounce notice reports and
    the event of the same type carries (``dsn``, ``reply``, ``relay``, ``attempts``)."""

    queue_id: str
    recipient: str
    state: RecipientState
    attempts: int
    dsn: str = ""
    reply: str = ""
    relay: str = "none"
    next_attempt: float = 0.0
    plugin_failures: int = 0
    tls: str = "none"  # the TLS outcome of the attempt: "none", "TLSv1.3 verified (mta-sts)"... (egress)
    source: str = ""  # the local (IP pool) address the copy left from; "" for the system's choice

    @property
    def last_reply(self) -> str:
        """What ``smtpgate queue`` shows: the enhanced code and the reply, bounded."""
        return f"{self.dsn} {self.reply}".strip()[:1000]


class EnqueueClaimer(Protocol):
    """Delivery as the spool sees it at enqueue: takes a message in the enqueue's own transaction
    (its recipients committed already ``processing``, leased), so a free delivery slot gets it with
    no claim query and no extra commit (issue 17 item 4)."""

    def reserve(self, recipients: Sequence[str], not_before: float) -> float | None:
        """A delivery slot for a message about to be committed: the lease (seconds), or ``None``
        (no free slot, not due yet, a held destination): then it is committed ``queued``."""
        ...

    def claimed(self, messages: list[QueuedMessage]) -> None:
        """Reserved messages now committed ``processing``: deliver them (in the event loop)."""
        ...

    def cancel(self, n: int) -> None:
        """``n`` reservations whose commit failed: the slots are free again."""
        ...


class Spool(SpoolWriter, Protocol):
    """The spool as delivery and the queue tools use it (SQLite today, PostgreSQL later)."""

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` in the event loop after each committed enqueue (wakes delivery)."""
        ...

    def set_claimer(self, claimer: EnqueueClaimer | None) -> None:
        """Hand messages to ``claimer`` at enqueue when it has a free slot (a backend may ignore it)."""
        ...

    def changed_elsewhere(self) -> bool:
        """Whether another process may have changed the queue since the last call (``smtpgate
        queue retry``, another node): cheap, called from the event loop on the scheduler's poll
        tick so an idle scheduler needs no queue query."""
        ...

    def recover(self) -> int:
        """Hand every recipient left in ``processing`` back to the queue; how many."""
        ...

    def claim(
        self,
        limit: int,
        lease: float,
        now: float | None = None,
        exclude: frozenset[tuple[str, str]] = frozenset(),
        hold: frozenset[str] = frozenset(),
    ) -> list[QueuedMessage]:
        """``hold``: recipient domains not to claim now (traffic shaping), left due and untouched."""
        ...

    def next_due(self, hold: frozenset[str] = frozenset()) -> float | None: ...

    async def record(self, outcomes: Sequence[RecipientOutcome]) -> None:
        """Commit recipients' results durably; a message whose recipients are all final leaves the queue."""
        ...

    def release(self, queue_id: str, recipients: Sequence[str]) -> None: ...

    def release_leases(self, leases: Sequence[float]) -> int:
        """Hand back recipients leased until exactly one of ``leases`` (claims that failed with an
        unknown outcome: their COMMIT may have happened); how many."""
        ...

    def list_recipients(self) -> list[dict[str, Any]]: ...

    def show(self, queue_id: str) -> dict[str, Any] | None: ...

    def retry(self, queue_id: str | None = None) -> int: ...

    def hold(self, queue_id: str) -> int:
        """Put the message's waiting copies on ``held`` (not attempted); how many."""
        ...

    def unhold(self, queue_id: str) -> int:
        """Release held copies (``queued``, due now); how many."""
        ...

    def delete(self, queue_id: str) -> bool: ...

    def close(self) -> None: ...


class EventStore(Protocol):
    """The durable event record as the gateway's services read and write it (SQLite today)."""

    async def record(self, event: Event, webhook_urls: Sequence[str] = (), origin: str | None = None) -> int:
        """Store the event with its webhook deliveries and suppression in one transaction; its id
        (``origin``: a unique key; an event already stored under it is not stored again)."""
        ...

    def is_suppressed(self, address: str, credential: str | None = None) -> bool: ...

    def delivered_at(self, queue_id: str, recipient: str) -> float | None: ...

    def message_info(self, queue_id: str) -> dict[str, str | None]: ...

    def recipients_of(self, queue_id: str) -> list[str]: ...

    def counts_by_type(self) -> dict[str, int]: ...

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL for statistics (``pipeline.events.stats``)."""
        ...

    def webhook_counts(self) -> dict[str, int]: ...

    def suppressed_count(self) -> int: ...

    def close(self) -> None: ...


class ResultRecorder(Protocol):
    """Commits recipients' results together with the events describing them (one transaction),
    then does what the event sink does after a write (counters, webhook wake, ``on_event``)."""

    async def record(
        self, outcomes: Sequence[RecipientOutcome], events: Sequence[Event], origins: Sequence[str] | None = None
    ) -> None:
        """``origins``: a unique key per event, kept across retries of the same result (idempotent)."""
        ...

    async def drain(self) -> int:
        """Finish what a crash interrupted (events committed with their results but not yet
        stored where the event store reads them); how many. Called at start, in a task of its own:
        delivery does not wait for it (the event store may be locked for a while)."""
        ...


class WebhookWaker(Protocol):
    """The webhook sender, as the event recorder sees it: a new delivery is waiting."""

    def wake(self) -> None: ...


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


@dataclass(frozen=True)
class MessageFilter:
    """A search of the message log; every field is optional and they combine with AND."""

    recipient: str | None = None
    sender: str | None = None
    message_id: str | None = None
    queue_id: str | None = None
    campaign: str | None = None
    credential: str | None = None
    state: str | None = None
    since: float | None = None
    until: float | None = None


class MessageLog(Protocol):
    """The message log as the management API reads it: search and one message's whole story.

    ``search`` takes the filters of ``GET /api/v1/messages`` (``recipient``, ``sender``,
    ``message_id``, ``queue_id``, ``campaign``, ``credential``, ``state``, ``since``, ``until``)
    and returns a page, newest first, with the cursor of the next page (``None`` on the last).
    """

    def search(
        self, f: MessageFilter, limit: int = 50, before: int | None = None
    ) -> tuple[list[dict[str, Any]], int | None]: ...

    def message(self, queue_id: str) -> dict[str, Any] | None: ...

    def webhook_deliveries(self, credential: str | None = None, limit: int = 50,
                           url: str | None = None) -> list[dict[str, Any]]:
        """The latest webhook deliveries with their event (one credential's, one URL's when given)."""
        ...


class ApiPrincipalView(Protocol):
    """Who an API token speaks for; ``credential`` ``None`` is an administrator."""

    @property
    def name(self) -> str: ...

    @property
    def credential(self) -> str | None: ...


class ApiTokenVerifier(Protocol):
    """Checks a management API bearer token (only hashes are stored)."""

    def verify(self, token: str) -> ApiPrincipalView | None: ...


class SuppressionEntry(Protocol):
    """One stoplist row: ``scope`` is a credential's name, or ``""`` for every credential."""

    @property
    def address(self) -> str: ...

    @property
    def scope(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def time(self) -> float: ...


class SuppressionAdmin(Protocol):
    """The stoplist as an operator manages it (the management API, the CLI)."""

    def suppress(self, address: str, scope: str = "", reason: str = "manual") -> bool:
        """Add; ``False`` when the address was already in that scope."""
        ...

    def unsuppress(self, address: str, scope: str | None = None) -> int: ...

    def suppressions(self, scope: str | None = None) -> Sequence[SuppressionEntry]: ...


class CredentialAdmin(Protocol):
    """The credentials an operator manages over the API (``credentials.db``; the config file's are
    listed, never changed). Secrets are returned once, when generated, and never listed."""

    def list(self) -> list[dict[str, Any]]: ...

    def add(
        self, name: str, kind: Any, *, username: str | None = None, secret: str | None = None,
        networks: Iterable[str] = (), options: dict[str, Any] | None = None,
    ) -> str | None: ...

    def set_disabled(self, name: str, disabled: bool = True) -> None: ...

    def rotate(self, name: str) -> str: ...
