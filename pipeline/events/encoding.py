"""Events encoded to JSON once per batch: the SQLite outbox row and the columns events.db stores.

Why (issue 17, per extra recipient copy): a message with N recipients has N ``accepted`` events that
differ only in recipient and time; each carried the same message summary (headers, admission
trace), and each was encoded whole (``json.dumps(event.to_record(), default=str)``) for spool.db's
outbox, then its ``data`` column and its copy's message-log JSON were encoded again for events.db.
:class:`EventEncoder` encodes a summary the batch's events share once (by identity) and splices it
into each event's text, with C encoders built once per batch; the columns events.db needs are kept
with the event (:class:`EncodedColumns`) for the forwarder. The output is byte-identical to the
``json.dumps`` calls it replaces (``tests/test_event_encoding.py`` compares them).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from pipeline.contract.context import Event

Encode = Callable[[Any], str]


def _encoder(item_separator: str, key_separator: str) -> Encode:
    """``json.dumps(value, separators=(item_separator, key_separator), default=str)`` as one C
    encoder built once: ``dumps`` builds a ``JSONEncoder`` and a C encoder on every call when given
    ``default`` (2-3 us of the 5-8 an event's JSON costs). The same C encoder, the same arguments
    (``check_circular`` included): the same text."""
    if c_make_encoder is None:  # pragma: no cover - CPython always has _json
        return json.JSONEncoder(separators=(item_separator, key_separator), default=str).encode
    run = c_make_encoder({}, str, encode_basestring_ascii, None, key_separator, item_separator, False, False, True)
    return lambda value: "".join(run(value, 0))


class _Encoders(threading.local):
    """The two C encoders of this thread, built once (:meth:`EventEncoder.__init__` cost 2.8 us,
    twice per message, building them per batch). Per thread: a C encoder's circular-reference
    markers are its own, and a ``default`` that runs Python code may let another thread in.
    Replaced after an error (the markers may then hold entries): see :meth:`EventEncoder.encode`."""

    def __init__(self) -> None:
        self.spaced: Encode
        self.compact: Encode
        self.renew()

    def renew(self) -> None:
        self.spaced = _encoder(", ", ": ")
        self.compact = _encoder(",", ":")


_ENCODERS = _Encoders()


def _renewed_on_error(pick: Callable[[_Encoders], Encode]) -> Encode:
    def dumps(value: Any) -> str:
        try:
            return pick(_ENCODERS)(value)
        except BaseException:
            _ENCODERS.renew()  # leftover circular-reference markers must not reach the next value
            raise

    return dumps


dumps_spaced = _renewed_on_error(lambda e: e.spaced)
"""``json.dumps(value, default=str)`` with this thread's C encoder: ``dumps`` with ``default``
builds a ``JSONEncoder`` and a C encoder per call (about 2.5 us; the event writer encodes each
accepted message's log entry, each event its data column)."""

dumps_compact = _renewed_on_error(lambda e: e.compact)
"""``json.dumps(value, separators=(",", ":"), default=str)`` with this thread's C encoder."""


_SPLICE = "\x00smtpgate-splice-" + secrets.token_hex(8)
_SPLICE_JSON = json.dumps(_SPLICE)
"""A string no event holds, put where a shared message summary goes and replaced by its JSON; used
only when it occurs exactly once in the output (else the event is encoded whole), so the result is
always what encoding the event whole gives."""

_MISSING = object()


LOGGED_APART = ("mail_from", "subject", "message_id", "size")
"""The keys of an ``accepted`` event's summary (``data["message"]``, the first four, in this order:
:func:`pipeline.chain.accept.message_summary`) that the message log stores in columns of their own;
the rest is its ``info`` JSON."""


@dataclass(frozen=True, slots=True)
class EncodedColumns:
    """An event's JSON columns in events.db, encoded already by whoever encoded the event (the
    SQLite outbox): ``data`` (without ``"message"``, compact), the message log's ``copy``
    (``json.dumps(data["message"], default=str)`` when that is a mapping, else ``None``) and, for
    a summary that starts with :data:`LOGGED_APART`, its ``info`` (``json.dumps`` of the rest)."""

    data: str
    copy: str | None
    info: str | None = None


@dataclass(slots=True)
class TxMemo:
    """What one transaction of the event store wrote already, by queue id: a later event of the same
    message skips a statement that could only do nothing (``ON CONFLICT DO NOTHING`` on the message
    log's row or the metadata row this transaction inserted). Only for a transaction that is rolled
    back whole, or whose caller forgets the queue id of a write it rolled back (:meth:`forget`)."""

    messages: set[str] = field(default_factory=set)
    meta: set[str] = field(default_factory=set)

    def forget(self, queue_id: str | None) -> None:
        if queue_id is not None:
            self.messages.discard(queue_id)
            self.meta.discard(queue_id)


class EventEncoder:
    """Encodes the events of one batch; the ``data["message"]`` that several events share (a
    message's summary on each recipient's ``accepted`` event) is encoded once.

    It is remembered by identity for the encoder's life: use one per synchronous batch (no event
    may change while it encodes), in one thread. The C encoders are the thread's, built once.
    """

    def __init__(self) -> None:
        self._messages: dict[int, tuple[Any, str, str | None]] = {}
        encoders = _ENCODERS  # this thread's, shared by its encoders (each call runs to its end)
        self._spaced = encoders.spaced
        self._compact = encoders.compact

    def _message(self, value: Any) -> tuple[str, str | None]:
        """``(json.dumps(value, default=str), the message log's info JSON or None)``.

        Why the info comes out of the same encode (issue 17, main process per message): the message
        log stored an ``accepted`` summary's rest encoded once more (36 us a message, the events
        writer's largest own cost). A dict that starts with :data:`LOGGED_APART` is encoded as
        those four keys and the rest; the rest's text is the info, and joined to the four it is
        exactly the whole dict's encoding (the same encoder, the same key order)."""
        hit = self._messages.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1], hit[2]
        info: str | None = None
        apart = len(LOGGED_APART)
        if type(value) is dict and len(value) > apart and tuple(islice(value, apart)) == LOGGED_APART:
            keys = iter(value.items())
            head = self._spaced(dict(islice(keys, apart)))
            info = self._spaced(dict(keys))
            text = f"{head[:-1]}, {info[1:]}"
        else:
            text = self._spaced(value)
        self._messages[id(value)] = (value, text, info)  # the value is held: its id is not reused meanwhile
        return text, info

    def encode(self, event: Event) -> tuple[str, EncodedColumns]:
        """``(json.dumps(event.to_record(), default=str), the columns events.db stores)``.

        After an error (a value that cannot be encoded, a circular reference) this thread's C
        encoders are built anew, as ``json.dumps`` builds one per call: the next event is encoded
        by encoders with no leftover markers."""
        try:
            return self._encode(event)
        except BaseException:
            encoders = _ENCODERS
            encoders.renew()
            self._spaced, self._compact = encoders.spaced, encoders.compact
            raise

    def _encode(self, event: Event) -> tuple[str, EncodedColumns]:
        data = event.data
        message = data.get("message", _MISSING)
        record = event.to_record()
        text: str | None = None
        copy: str | None = None
        info: str | None = None
        if type(message) in (dict, list):
            encoded, info = self._message(message)
            record["data"] = {**data, "message": _SPLICE}  # same key order: the value is replaced in place
            spliced = self._spaced(record)
            if spliced.count(_SPLICE_JSON) == 1:
                text = spliced.replace(_SPLICE_JSON, encoded)
            else:  # an event that holds the marker itself: encoded whole
                record["data"] = data
            if isinstance(message, dict):
                copy = encoded
        if text is None:
            text = self._spaced(record)
        if copy is None and isinstance(message, Mapping):
            copy = self._spaced(message)
        if len(data) == (0 if message is _MISSING else 1):
            column = "{}"
        else:
            column = self._compact({k: v for k, v in data.items() if k != "message"})
        return text, EncodedColumns(column, copy, info)
