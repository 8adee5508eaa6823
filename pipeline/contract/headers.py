"""Header fields, edits and the errors of the message model: parsing-free building blocks.

What a header may contain (no CR/LF injection), how it is folded, decoded and checked, and the
record of one edit (:class:`Edit`), shared by the MIME tree and the editing API.
"""

from __future__ import annotations

import contextvars
import email.header
import email.message
import email.utils
import re
from dataclasses import dataclass

from pipeline.contract.vocabulary import EditAction

CRLF = b"\r\n"

#: Name of the plugin whose hook is running; the chain sets it so edits are attributed.
current_actor: contextvars.ContextVar[str] = contextvars.ContextVar("smtpgate_actor", default="core")

_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII except ':' (RFC 5322 ftext)
_NOT_A_FIELD = re.compile(rb"\r\n(?![ \t])(?![!-9;-~]+[ \t]*:)")
"""A line break inside a header block followed by neither a continuation nor ``Name:`` (Postfix's is_header)."""
_BAD_ADDRESS = re.compile(r"[\s<>\0]")  # would break out of MAIL FROM:<...> / RCPT TO:<...>
_FOLD = re.compile(r"\r\n(?=[ \t])")  # a folding line break (the CRLF before a continuation line)

ADDRESS_HEADERS = frozenset(
    [
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "sender",
        "resent-from",
        "resent-to",
        "resent-cc",
        "resent-sender",
    ]
)


class MessageError(ValueError):
    """The bytes are not a usable RFC 5322 message, or an edit is malformed."""


class SealedError(RuntimeError):
    """An edit was attempted after the message was signed."""


@dataclass(frozen=True, slots=True)
class Edit:
    """One recorded change, milter-style (addheader, chgheader, replacebody, chgfrom, addrcpt, delrcpt)."""

    plugin: str
    action: EditAction
    target: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f" = {self.detail}" if self.detail else ""
        return f"{self.plugin}: {self.action} {self.target}{detail}"


_IS_CR = bytes(b == 13 for b in range(256))  # translate tables: 1 where the octet is a CR (an LF), else 0
_IS_LF = bytes(b == 10 for b in range(256))


def crlf_only(data: bytes) -> bool:
    """Whether every CR in ``data`` is directly followed by an LF and every LF directly preceded by a CR.

    That is: octet ``i`` is a CR exactly when octet ``i + 1`` is an LF, the last octet is no CR and
    the first no LF. Two table translations (flat byte loops) and one ``memcmp`` of the CR map
    against the LF map shifted by one: 10-20 % less than counting CRLFs (a two-octet search)
    plus deleting CR and LF, the check's cost before, per 55 KB copy. Still 0.1-0.2 ms a 55 KB copy:
    a worker makes it on the copies it made (``CopyResult.crlf``), so the egress in the main
    process does not (here, in the contract, so both import it without importing each other);
    :func:`normalize_newlines` asks it of every message at DATA.
    """
    cr = data.translate(_IS_CR)
    lf = data.translate(_IS_LF)
    return cr.startswith(memoryview(lf)[1:]) and not cr.endswith(b"\x01") and not lf.startswith(b"\x01")


def normalize_newlines(raw: bytes) -> bytes:
    """Every line ending becomes CRLF (bare CR and bare LF included)."""
    if b"\r" not in raw:
        return raw.replace(b"\n", CRLF)
    if crlf_only(raw):  # already CRLF only (the common case, no copy): it runs at DATA for every message
        return raw
    return raw.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def decode_header_value(value: str) -> str:
    """Decode RFC 2047 encoded-words; on malformed input return the value unchanged."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError, email.errors.HeaderParseError):
        return value


def check_header(name: str, value: str) -> None:
    """Refuse a header name or value that could inject another header (CR/LF) or is malformed."""
    if not _HEADER_NAME.match(name):
        raise MessageError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise MessageError(f"header {name}: value contains CR, LF or NUL")


def check_address(address: str) -> None:
    """Refuse an envelope address that could inject SMTP syntax (whitespace, CR/LF, angle brackets)."""
    if _BAD_ADDRESS.search(address):
        raise MessageError(f"invalid envelope address {address!r}")


def format_header(name: str, value: str) -> bytes:
    """``Name: value`` as wire bytes: ASCII kept as is (folded if very long), other text RFC 2047-encoded."""
    check_header(name, value)
    if value.isascii():
        line = f"{name}: {value}"
        if len(line) <= 998:
            return line.encode("ascii")
        folded = f"{name}: " + email.header.Header(value, "us-ascii", header_name=name).encode(linesep="\r\n")
        if max(map(len, folded.split("\r\n"))) <= 998:
            return folded.encode("ascii")
        # a run of 998+ octets without a space cannot be folded; encoded-words can be split
    elif name.lower() in ADDRESS_HEADERS:
        # Encode display names only: an address inside an encoded-word is no address at all.
        pairs = email.utils.getaddresses([value])
        if pairs and all(addr and addr.isascii() for _, addr in pairs):
            encoded = ", ".join(email.utils.formataddr(pair, charset="utf-8") for pair in pairs)
            return f"{name}: {encoded}".encode("ascii")
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}".encode("ascii")


class Header:
    """One header field as it stands on the wire (folding kept)."""

    __slots__ = ("name", "lname", "raw", "_value")

    def __init__(self, name: str, raw: bytes) -> None:
        self.name = name
        #: ``name.lower()``, computed once: every header look-up compares it (admission looks the
        #: same fields up a few dozen times per message). The name of a field never changes.
        self.lname = name.lower()
        self.raw = raw
        self._value: str | None = None

    @property
    def raw_value(self) -> str:
        """The unfolded value, not RFC 2047-decoded (undecodable bytes kept as surrogates)."""
        text = self.raw.decode("utf-8", "surrogateescape")
        _, _, value = text.partition(":")
        if "\r\n" in value:  # folded (most fields are not: no regex pass for them)
            value = _FOLD.sub("", value)
        return value.strip()

    @property
    def value(self) -> str:
        """The unfolded, RFC 2047-decoded value."""
        if self._value is None:
            self._value = decode_header_value(self.raw_value)
        return self._value

    def has_8bit(self) -> bool:
        """True when the field holds raw 8-bit bytes (not allowed in RFC 5322 headers)."""
        return not self.raw.isascii()

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {self.value!r})"
