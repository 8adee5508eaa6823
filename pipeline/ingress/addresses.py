"""Envelope address parsing for MAIL FROM / RCPT TO, strict enough to close every relay trick.

RFC 5321 paths: ``<local@domain>`` (brackets optional here: Perfit sends ``MAIL FROM: a@b``),
an optional obsolete source route ``<@a,@b:local@domain>`` (reported, so the relay check can
refuse it), then ``SP``-separated ESMTP parameters. The address must be a dot-atom or quoted
local part, one ``@`` and a host name or address literal: ``user@local.domain@evil`` is a
syntax error, not something to "repair". Relay-trick local parts (``%``, ``!``, quoted) are
parsed but flagged, so unauthenticated clients can be refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?\Z")
_LITERAL = re.compile(r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]\Z")
_ROUTE = re.compile(rf"@{_LABEL}(?:\.{_LABEL})*(?:,@{_LABEL}(?:\.{_LABEL})*)*:")
_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?\Z")


class AddressError(ValueError):
    """The path is not valid SMTP syntax (``kind`` is ``syntax`` or ``address``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Path:
    """A parsed MAIL FROM / RCPT TO argument."""

    address: str  # "" for the null sender
    local: str = ""
    domain: str = ""
    source_route: bool = False
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def relay_trick(self) -> str | None:
        """Why this address could make a naive server relay (percent hack...), or ``None``."""
        if self.source_route:
            return "source route"
        if self.local.startswith('"'):
            return "quoted local part"
        if "%" in self.local:
            return "percent hack"
        if "!" in self.local:
            return "bang path"
        return None


def _split_path(arg: str) -> tuple[str, str]:
    """``(path, rest)``: the bracketed path (quotes respected) or the first word."""
    arg = arg.strip()
    if not arg.startswith("<"):
        path, _, rest = arg.partition(" ")
        return path, rest
    end = arg.find(">")
    if end != -1 and arg.find('"', 0, end) == -1:  # no quote before the first ">": it closes the path
        return arg[1:end], arg[end + 1 :]
    in_quotes = escaped = False
    for i, ch in enumerate(arg):
        if escaped:
            escaped = False
        elif ch == "\\" and in_quotes:
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == ">" and not in_quotes:
            return arg[1:i], arg[i + 1 :]
    raise AddressError("syntax", "unbalanced angle brackets")


def split_address(address: str) -> tuple[str, str]:
    """``(local, domain)`` of a syntactically valid ``local@domain`` (quoted local parts allowed)."""
    if len(address) > 254:
        raise AddressError("address", "address longer than 254 characters")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise AddressError("address", "address must be local-part@domain")
    if len(local) > 64:
        raise AddressError("address", "local part longer than 64 characters")
    if not (_DOT_ATOM.match(local) or _QUOTED.match(local)):
        raise AddressError("address", "invalid local part")
    if not (_DOMAIN.match(domain) or _LITERAL.match(domain)):
        raise AddressError("address", "invalid domain")
    return local, domain


def parse_path(arg: str, *, allow_null: bool) -> Path:
    """Parse the text after ``FROM:`` / ``TO:``. Raises :class:`AddressError`."""
    if not arg.isascii():
        raise AddressError("address", "8-bit characters in address (SMTPUTF8 is not offered)")
    raw, rest = _split_path(arg)
    route = _ROUTE.match(raw)
    if route:
        raw = raw[route.end() :]
    params: dict[str, str | None] = {}
    for word in rest.split():
        if not _PARAM.match(word):
            raise AddressError("syntax", f"invalid parameter {word!r}")
        key, eq, value = word.partition("=")
        params[key.upper()] = value if eq else None
    if raw == "":
        if not allow_null or route:
            raise AddressError("address", "empty address")
        return Path("", params=params)
    local, domain = split_address(raw)
    return Path(raw, local, domain.rstrip(".").lower(), source_route=bool(route), params=params)


def domain_of(address: str) -> str:
    """The lower-cased domain of an address (``""`` for the null sender)."""
    return address.rpartition("@")[2].rstrip(".").lower()


def domain_matches(domain: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """``domain`` equals a pattern, or is below a pattern written ``.example.com`` / ``*.example.com``."""
    domain = domain.lower()
    for pattern in patterns:
        p = pattern.lower()
        if p.startswith("*."):
            p = p[1:]
        if p.startswith("."):
            if domain.endswith(p):
                return True
        elif domain == p:
            return True
    return False
