"""The closed vocabularies of the gateway, as types: event types, recipient states, credential
kinds, message edit actions and plugin sources.

They are :class:`~enum.StrEnum` members, so they compare equal to (and serialise as) the plain
strings the spool, the event store, webhooks and plugins have always used: ``EventType.CLICKED
== "clicked"``. A typo in core code becomes a mypy or import error instead of a silent miss.
"""

from __future__ import annotations

from enum import StrEnum


class RecipientState(StrEnum):
    """Where one recipient of a spooled message stands (the spool's ``recipients.state``).

    ``queued`` -> ``processing`` (leased) -> ``delivered`` | ``deferred`` | ``bounced`` |
    ``expired`` | ``failed`` | ``discarded``. An operator may put a waiting copy (``queued`` or
    ``deferred``) on ``held``: it is not attempted until released (``queued`` again).
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    FAILED = "failed"
    DISCARDED = "discarded"
    HELD = "held"

    @property
    def final(self) -> bool:
        """Nothing more will be attempted for this recipient."""
        return self in FINAL_STATES


FINAL_STATES = frozenset({
    RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.EXPIRED, RecipientState.FAILED,
    RecipientState.DISCARDED,
})


class EventType(StrEnum):
    """What an :class:`~pipeline.contract.context.Event` reports. Delivery results use the
    recipient state of the same name; the rest come from ingress and tracking."""

    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    FAILED = "failed"
    DISCARDED = "discarded"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"
    REJECTED = "rejected"  # a refusal the gateway answered (SMTP or HTTP send), aggregated: events/refusals.py


class CredentialKind(StrEnum):
    """How a client proves who it is: an API key, a login and password, or its IP address."""

    APIKEY = "apikey"
    PASSWORD = "password"
    IP = "ip"


class EditAction(StrEnum):
    """What a recorded :class:`~pipeline.contract.message.Edit` did to the message."""

    ADD_HEADER = "add_header"
    CHANGE_HEADER = "change_header"
    REMOVE_HEADER = "remove_header"
    REPLACE_HTML = "replace_html"
    REPLACE_TEXT = "replace_text"
    CHANGE_SENDER = "change_sender"
    ADD_RCPT = "add_rcpt"
    REMOVE_RCPT = "remove_rcpt"


class PluginSource(StrEnum):
    """Where a loaded plugin came from (``smtpgate plugins`` shows it with the detail)."""

    BUILTIN = "built-in"
    ENTRY_POINT = "entry point"
    MODULE = "module"
    FILE = "file"
    GIVEN = "given"
