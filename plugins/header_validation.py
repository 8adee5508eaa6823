"""header_validation: refuse at DATA what receivers (and our own DKIM signer) would refuse later.

Sendsay accepts a message without its required headers and then drops it silently; we answer
the DATA command with ``550 5.6.0`` naming the header instead, so the sender learns at once.
By default the headers a receiver needs and that have a safe default are added when missing,
as Postfix's cleanup does (``Message-Id``, ``Date``, RFC 2045's ``MIME-Version`` and
``Content-Type``, ``From`` from the envelope sender, ``To: undisclosed-recipients:;``), so the
vendors' abbreviated example messages are accepted; ``strict = true`` adds only ``Message-Id``
and ``Date`` and refuses the rest. Raw 8-bit bytes in a header are
RFC 2047-encoded (or rejected, by config), since RFC 5322 headers are ASCII.
"""

from __future__ import annotations

import codecs
import datetime
import email.errors
import email.header
import email.headerregistry
import email.policy
import email.utils
import functools
import re
import secrets
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline import Header, MessageContext, Plugin, PluginConfig, Reject, hookimpl

CRLF = b"\r\n"

DEFAULT_REQUIRED = ["Message-Id", "Date", "From", "To", "Subject", "MIME-Version", "Content-Type"]
"""Sendsay's list: the headers its DKIM signature covers."""

RFC5322_SINGLETONS = [
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-Id",
    "In-Reply-To",
    "References",
    "Subject",
]
"""Fields RFC 5322 section 3.6 allows at most once (Gmail refuses duplicates of these)."""

ADDABLE = ("message-id", "date", "mime-version", "content-type", "from", "to")
DEFAULT_ADD_MISSING = ("Message-Id", "Date", "MIME-Version", "Content-Type", "From", "To")
STRICT_ADD_MISSING = ("Message-Id", "Date")
"""What ``strict = true`` adds when ``add_missing`` is not given: receivers refuse mail without these."""

ADDRESS_HEADERS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
    }
)
"""Headers whose 8-bit bytes may only sit in display names (encoded-words cannot hold an address)."""

STRUCTURED_PREFIXES = ("content-", "list-", "dkim-", "arc-", "authentication-results")
STRUCTURED_HEADERS = frozenset(
    {
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "received",
        "return-path",
        "resent-date",
        "resent-message-id",
        "feedback-id",
    }
)
"""Structured headers: RFC 2047 encoded-words are not allowed in them, so 8-bit bytes are rejected."""

_FIELD_START = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")  # RFC 5322 ftext then ':' (no space before it)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


class _Names:
    """The configured header lists as the check reads them: ``(name, lower-case name)`` pairs."""

    __slots__ = ("required", "add_missing", "wanted", "unique")

    def __init__(
        self, required: tuple[str, ...], add_missing: tuple[str, ...], unique: tuple[str, ...]
    ) -> None:
        self.required = frozenset(n.lower() for n in required)
        self.add_missing = {n.lower(): n for n in add_missing}  # (the last spelling of a name wins)
        # required, then add_missing, in order; a name's first spelling is the one a refusal uses
        wanted: dict[str, str] = {}
        for name in required + add_missing:
            wanted.setdefault(name.lower(), name)
        self.wanted = [(name, lname) for lname, name in wanted.items()]
        self.unique = [(name, name.lower()) for name in unique]


class HeaderValidation(Plugin):
    """Required, unique and well-formed top-level headers, checked at the end of DATA."""

    name = "header_validation"
    feature = "validate"
    feature_default = True
    feature_by_header = False  # policy: the config and the credential decide, never a message header
    version = "1.0"

    class Config(PluginConfig):
        required: list[str] = Field(default_factory=lambda: list(DEFAULT_REQUIRED))
        # RFC 2045 defaults and a From from the envelope sender, as Postfix's cleanup: every
        # vendor's documented example message is accepted. ``strict = true``: only Message-Id/Date.
        add_missing: list[str] = Field(default_factory=lambda: list(DEFAULT_ADD_MISSING))
        strict: bool = False
        unique: list[str] = Field(default_factory=lambda: list(RFC5322_SINGLETONS))
        eight_bit_headers: Literal["encode", "reject"] = "encode"
        eight_bit_fallback_charset: str = "latin-1"
        max_headers: int = Field(default=500, gt=0)
        max_header_line: int = Field(default=998, ge=78, le=998)

        @field_validator("required", "unique", "add_missing")
        @classmethod
        def _header_names(cls, v: list[str]) -> list[str]:
            for name in v:
                if not re.fullmatch(r"[!-9;-~]+", name):
                    raise ValueError(f"{name!r} is not a header name")
            return v

        @field_validator("add_missing")
        @classmethod
        def _addable(cls, v: list[str]) -> list[str]:
            for name in v:
                if name.lower() not in ADDABLE:
                    raise ValueError(
                        f"cannot generate a {name} header (only Message-Id, Date, MIME-Version, "
                        "Content-Type, From and To can be added)"
                    )
            return v

        @model_validator(mode="after")
        def _strict(self) -> HeaderValidation.Config:
            if self.strict and "add_missing" not in self.model_fields_set:
                self.add_missing = list(STRICT_ADD_MISSING)
            return self

        @field_validator("eight_bit_fallback_charset")
        @classmethod
        def _codec(cls, v: str) -> str:
            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"unknown charset {v!r}") from None
            return v

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        msg = ctx.message
        headers = msg.headers
        counts = self._check_shape(headers)
        if isinstance(counts, Reject):
            return counts
        plan = self._names()
        for name, lname in plan.unique:
            n = counts.get(lname, 0)
            if n > 1:
                return Reject(550, "5.6.0", f"Message has {n} {name}: headers")
        to_add: dict[str, tuple[str, str]] = {}
        for name, lname in plan.wanted:
            if lname in counts or lname in to_add:
                continue
            add_as = plan.add_missing.get(lname)
            value = self._generate(add_as, ctx) if add_as is not None else None
            if value is None:
                if lname in plan.required:
                    return Reject(550, "5.6.0", f"Message has no {name}: header")
                continue
            to_add[lname] = (add_as, value)  # type: ignore[assignment]
        rewrites = self._plan_8bit(headers)
        if isinstance(rewrites, Reject):
            return rewrites
        # The raw (not RFC 2047-decoded) value: a decoded display name may hold a comma.
        from_value = None
        if "from" in counts:
            from_value = next(h.raw_value for h in headers if h.lname == "from")
        from_value = next((v for (h, _, v) in rewrites if h.lname == "from"), from_value)
        if from_value is None and "from" in to_add:
            from_value = to_add["from"][1]
        if from_value is not None:
            verdict = check_from(from_value)
            if verdict:
                return verdict
        for header, index, value in rewrites:
            msg.change_header(header.name, value, index)
        for name, value in to_add.values():
            msg.add_header(name, value)
        return None

    def _names(self) -> _Names:
        """The configured header lists, lower-cased once (not for every message): rebuilt only
        when the lists are not what they were."""
        config = self.config
        key = (tuple(config.required), tuple(config.add_missing), tuple(config.unique))
        cached: tuple[tuple[tuple[str, ...], ...], _Names] | None = getattr(self, "_names_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        names = _Names(*key)
        self._names_cache = (key, names)
        return names

    # -- checks ---------------------------------------------------------------------------
    def _check_shape(self, headers: list[Header]) -> dict[str, int] | Reject:
        """The first malformed, overlong or excess field as a refusal; otherwise how many fields
        of each (lower-case) name there are, counted in the same pass."""
        if len(headers) > self.config.max_headers:
            return Reject(
                552,
                "5.3.4",
                f"Message has too many header fields ({len(headers)}, limit {self.config.max_headers})",
            )
        limit = self.config.max_header_line
        counts: dict[str, int] = {}
        for number, header in enumerate(headers, 1):
            raw = header.raw
            if not header.name or not _FIELD_START.match(raw):
                return Reject(550, "5.6.0", f"Malformed header field number {number}: expected Name: value")
            counts[header.lname] = counts.get(header.lname, 0) + 1
            if len(raw) <= limit:  # no line of it can be longer: the common case, nothing split
                continue
            longest = max(len(line) for line in raw.split(CRLF))
            if longest > limit:
                return Reject(
                    550, "5.6.0", f"Header line too long in {header.name}: ({longest} octets, limit {limit})"
                )
        return counts

    # -- missing headers ------------------------------------------------------------------
    def _generate(self, name: str, ctx: MessageContext) -> str | None:
        lname = name.lower()
        if lname == "message-id":
            return f"<{ctx.queue_id}.{secrets.token_hex(4)}@{self.env.hostname}>"
        if lname == "date":
            when = datetime.datetime.fromtimestamp(ctx.received_at, datetime.UTC)
            return email.utils.format_datetime(when)
        if lname == "mime-version":
            return "1.0"
        if lname == "content-type":
            return "text/plain; charset=us-ascii"  # RFC 2045 section 5.2: the implicit default
        if lname == "from":
            sender = ctx.message.mail_from
            return sender or None  # the null sender cannot stand in for an author
        if lname == "to":
            return "undisclosed-recipients:;"
        return None

    # -- 8-bit headers --------------------------------------------------------------------
    def _plan_8bit(self, headers: list[Header]) -> list[tuple[Header, int, str]] | Reject:
        """``(header, occurrence index, new ASCII value)`` for each 8-bit header, or a Reject."""
        plan: list[tuple[Header, int, str]] = []
        if all(header.raw.isascii() for header in headers):
            return plan  # (the common case: no occurrence index to count)
        seen: dict[str, int] = {}
        for header in headers:
            lname = header.lname
            index = seen.get(lname, 0)
            seen[lname] = index + 1
            if not header.has_8bit():
                continue
            if self.config.eight_bit_headers == "reject":
                return Reject(
                    550, "5.6.0", f"Raw 8-bit bytes in {header.name}: header; use RFC 2047 encoding"
                )
            if lname in STRUCTURED_HEADERS or lname.startswith(STRUCTURED_PREFIXES):
                return Reject(
                    550,
                    "5.6.0",
                    f"Raw 8-bit bytes in {header.name}: header (a structured field must be ASCII)",
                )
            text = self._decode_raw(header)
            if lname in ADDRESS_HEADERS:
                value = encode_address_header(header.name, text)
                if isinstance(value, Reject):
                    return value
            else:
                value = text  # Message.change_header RFC 2047-encodes non-ASCII text as UTF-8
            plan.append((header, index, value))
        return plan

    def _decode_raw(self, header: Header) -> str:
        """The field's value bytes as text: UTF-8 when they are valid UTF-8, else the fallback charset."""
        _, _, value = header.raw.partition(b":")
        value = re.sub(rb"\r\n(?=[ \t])", b"", value).strip()
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode(self.config.eight_bit_fallback_charset, "replace")


def parse_address_header(name: str, value: str) -> email.headerregistry.AddressHeader | None:
    """The standard library's strict RFC 5322 parse, or ``None`` when it cannot parse the value.

    The parser raises IndexError, AttributeError, TypeError... on some garbage (fuzzing finds
    them in seconds); a client's bad header must get a 550, not a plugin failure (451).
    """
    try:
        parsed = email.policy.default.header_factory(name, value)
    except Exception:  # noqa: BLE001 - any parser crash means "not a parsable address list"
        return None
    return parsed if isinstance(parsed, email.headerregistry.AddressHeader) else None


_CHECK_FROM_CACHE_MAX_LEN = 2048
"""Longer From values are checked without the cache (an odd value must not pin much memory)."""


def check_from(value: str) -> Reject | None:
    """enKod's "invalid from email": exactly one address, with a local part and a host-name domain.

    A pure function of the header text: a campaign's messages share one From, and the stdlib
    address parse was half of admission's time, so results are cached by the exact text (the
    verdicts are frozen, sharing one is safe).
    """
    if len(value) > _CHECK_FROM_CACHE_MAX_LEN:
        return _check_from(value)
    return _check_from_cached(value)


def _check_from(value: str) -> Reject | None:
    parsed = parse_address_header("From", value)
    if parsed is None:
        return Reject(550, "5.6.0", "Invalid From: header: no valid email address")
    addresses = parsed.addresses
    invalid = any(isinstance(d, email.errors.InvalidHeaderDefect) for d in getattr(parsed, "defects", ()))
    if len(addresses) > 1 and not invalid:
        return Reject(550, "5.6.0", f"Invalid From: header: {len(addresses)} addresses, exactly one allowed")
    if len(addresses) != 1 or not addresses[0].username or invalid:
        if len(addresses) == 1 and addresses[0].username and not addresses[0].domain:
            return Reject(550, "5.6.0", "Invalid From: header: the address has no domain")
        return Reject(550, "5.6.0", "Invalid From: header: no valid email address")
    if not _HOSTNAME.match(addresses[0].domain):
        return Reject(550, "5.6.0", "Invalid From: header: the domain is not a valid host name")
    return None


_check_from_cached = functools.lru_cache(maxsize=512)(_check_from)


def encode_address_header(name: str, text: str) -> str | Reject:
    """Re-render an address list with RFC 2047-encoded display names; non-ASCII addresses are refused."""
    parsed = parse_address_header(name, text)
    if parsed is None or any(isinstance(d, email.errors.InvalidHeaderDefect) for d in getattr(parsed, "defects", ())):
        return Reject(550, "5.6.0", f"Invalid {name}: header: cannot parse the address list")
    rendered: list[str] = []
    for group in parsed.groups:
        members = []
        for addr in group.addresses:
            if not addr.addr_spec.isascii():
                return Reject(
                    550, "5.6.7", f"Non-ASCII address in {name}: header (SMTPUTF8 is not supported)"
                )
            members.append(email.utils.formataddr((addr.display_name, addr.addr_spec), charset="utf-8"))
        if group.display_name is None:
            rendered.extend(members)
        else:
            label = group.display_name
            if not label.isascii():
                label = email.header.Header(label, "utf-8").encode()
            rendered.append(f"{label}: {', '.join(members)};")
    return ", ".join(rendered)
