"""The Sendmail/Postfix milter protocol, version 6: constants, framing and payload codecs.

No I/O here. Every packet is a 4-byte big-endian length (counting the command byte), one command
byte and ``length - 1`` data bytes; strings are NUL-terminated. Constants and layouts follow
libmilter's ``mfdef.h`` and the MTA side of Postfix (``src/milter/milter8.c``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

VERSION = 6
CHUNK = 65535  # MILTER_CHUNK_SIZE: the largest body chunk (SMFIC_BODY / SMFIR_REPLBODY) on the wire

# MTA -> filter commands
ABORT, BODY, CONNECT, MACRO, EOB, HELO = b"A", b"B", b"C", b"D", b"E", b"H"
QUIT_NC, HEADER, MAIL, EOH, OPTNEG, QUIT, RCPT, DATA, UNKNOWN = (
    b"K",
    b"L",
    b"M",
    b"N",
    b"O",
    b"Q",
    b"R",
    b"T",
    b"U",
)
COMMAND_NAMES = {
    ABORT: "SMFIC_ABORT",
    BODY: "SMFIC_BODY",
    CONNECT: "SMFIC_CONNECT",
    MACRO: "SMFIC_MACRO",
    EOB: "SMFIC_BODYEOB",
    HELO: "SMFIC_HELO",
    QUIT_NC: "SMFIC_QUIT_NC",
    HEADER: "SMFIC_HEADER",
    MAIL: "SMFIC_MAIL",
    EOH: "SMFIC_EOH",
    OPTNEG: "SMFIC_OPTNEG",
    QUIT: "SMFIC_QUIT",
    RCPT: "SMFIC_RCPT",
    DATA: "SMFIC_DATA",
    UNKNOWN: "SMFIC_UNKNOWN",
}

# filter -> MTA replies and actions
R_ADDRCPT, R_DELRCPT, R_ACCEPT, R_REPLBODY, R_CONTINUE, R_DISCARD = b"+", b"-", b"a", b"b", b"c", b"d"
R_CHGFROM, R_ADDHEADER, R_INSHEADER, R_SETSYMLIST, R_CHGHEADER = b"e", b"h", b"i", b"l", b"m"
R_REJECT, R_TEMPFAIL, R_REPLYCODE, R_OPTNEG = b"r", b"t", b"y", b"O"

# SMFIF_*: actions the filter may ask for at end of message
F_ADDHDRS, F_CHGBODY, F_ADDRCPT, F_DELRCPT, F_CHGHDRS = 0x01, 0x02, 0x04, 0x08, 0x10
F_CHGFROM, F_SETSYMLIST = 0x40, 0x100
ACTION_NAMES = {
    F_ADDHDRS: "add headers",
    F_CHGBODY: "replace the body",
    F_ADDRCPT: "add recipients",
    F_DELRCPT: "delete recipients",
    F_CHGHDRS: "change headers",
    F_CHGFROM: "change the sender",
}

# SMFIP_*: steps the filter does not want, replies it will not send, header value form
P_NOCONNECT, P_NOHELO, P_NOMAIL, P_NORCPT, P_NOBODY, P_NOHDRS, P_NOEOH = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40
P_NR_HDR, P_NOUNKNOWN, P_NODATA = 0x80, 0x100, 0x200
P_NR_CONN, P_NR_HELO, P_NR_MAIL, P_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
P_NR_DATA, P_NR_UNKN, P_NR_EOH, P_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
P_HDR_LEADSPC = 0x100000

# SMFIM_*: the stages a macro list (SMFIR_SETSYMLIST in the OPTNEG reply) applies to
M_CONNECT, M_HELO, M_ENVFROM, M_ENVRCPT, M_DATA, M_EOM, M_EOH = range(7)


class ProtocolError(ValueError):
    """A packet that does not follow the protocol (the message says what and where)."""


@dataclass(frozen=True, slots=True)
class Packet:
    command: bytes
    data: bytes

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command, f"unknown command {self.command!r}")


def encode(command: bytes, data: bytes = b"") -> bytes:
    """One packet on the wire."""
    return struct.pack("!I", len(data) + 1) + command + data


def packet_length(header: bytes, limit: int) -> int:
    """The length announced by a 4-byte packet header, checked against ``limit`` (command byte included)."""
    (length,) = struct.unpack("!I", header)
    if length < 1:
        raise ProtocolError("packet length 0: every packet has at least a command byte")
    if length > limit:
        raise ProtocolError(f"packet of {length} bytes exceeds the limit of {limit} bytes")
    return length


def split_strings(data: bytes, what: str, count: int | None = None) -> list[bytes]:
    """NUL-terminated strings; ``count`` of them exactly when given."""
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what}: string not NUL-terminated")
    parts = data[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise ProtocolError(f"{what}: expected {count} string(s), got {len(parts)}")
    return parts


def text(value: bytes) -> str:
    """Protocol strings are bytes; 8-bit content survives a round trip (surrogateescape)."""
    return value.decode("utf-8", "surrogateescape")


def wire(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Negotiation:
    version: int
    actions: int
    protocol: int


def parse_optneg(data: bytes) -> Negotiation:
    if len(data) < 12:
        raise ProtocolError(f"SMFIC_OPTNEG: {len(data)} data bytes, 12 needed")
    version, actions, protocol = struct.unpack("!III", data[:12])
    if version < 2:
        raise ProtocolError(f"SMFIC_OPTNEG: protocol version {version} is not supported (2 to 6)")
    return Negotiation(version, actions, protocol)


def optneg_reply(version: int, actions: int, protocol: int, macros: dict[int, str] | None = None) -> bytes:
    data = struct.pack("!III", version, actions, protocol)
    for stage, names in (macros or {}).items():
        data += struct.pack("!I", stage) + wire(names) + b"\0"
    return encode(R_OPTNEG, data)


def parse_macros(data: bytes) -> tuple[bytes, dict[str, str]]:
    """``(command the macros are for, {name without braces: value})``."""
    if not data:
        raise ProtocolError("SMFIC_MACRO: no command code")
    stage, rest = data[:1], data[1:]
    if not rest:
        return stage, {}
    parts = split_strings(rest, "SMFIC_MACRO")
    if len(parts) % 2:
        raise ProtocolError("SMFIC_MACRO: a macro name without a value")
    out = {}
    for name, value in zip(parts[::2], parts[1::2], strict=True):
        out[text(name).strip("{}")] = text(value)
    return stage, out


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str
    family: str  # "4", "6", "L" (unix), "U" (unknown)
    port: int
    address: str


def parse_connect(data: bytes) -> Connect:
    host, sep, rest = data.partition(b"\0")
    if not sep or not rest:
        raise ProtocolError("SMFIC_CONNECT: no address family after the host name")
    family = chr(rest[0])
    if family == "U":
        return Connect(text(host), family, 0, "")
    if family not in "46L" or len(rest) < 3:
        raise ProtocolError(f"SMFIC_CONNECT: bad address family {family!r}")
    (port,) = struct.unpack("!H", rest[1:3])
    (address,) = split_strings(rest[3:], "SMFIC_CONNECT address", 1)
    return Connect(text(host), family, port, text(address))


def parse_args(data: bytes, what: str) -> list[str]:
    """SMFIC_MAIL / SMFIC_RCPT: the address (``<...>``) and its ESMTP parameters."""
    args = [text(a) for a in split_strings(data, what)]
    if not args or not args[0]:
        raise ProtocolError(f"{what}: no address")
    return args


def parse_header(data: bytes) -> tuple[str, str]:
    name, value = split_strings(data, "SMFIC_HEADER", 2)
    if not name:
        raise ProtocolError("SMFIC_HEADER: empty header name")
    return text(name), text(value)


def strip_brackets(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address


# -- replies --------------------------------------------------------------------------------

CONTINUE = encode(R_CONTINUE)
ACCEPT = encode(R_ACCEPT)
DISCARD = encode(R_DISCARD)
TEMPFAIL = encode(R_TEMPFAIL)
REJECT = encode(R_REJECT)


def replycode(reply: str) -> bytes:
    """SMFIR_REPLYCODE: the exact SMTP reply (``550 5.7.1 text``; multi-line joined by CRLF)."""
    return encode(R_REPLYCODE, wire(reply.replace("%", "%%")) + b"\0")


def header_action(command: bytes, name: str, value: str, index: int | None = None) -> bytes:
    head = struct.pack("!I", index) if index is not None else b""
    return encode(command, head + wire(name) + b"\0" + wire(value) + b"\0")


def address_action(command: bytes, address: str) -> bytes:
    return encode(command, wire(f"<{address}>") + b"\0")


def body_chunks(body: bytes) -> Iterator[bytes]:
    """SMFIR_REPLBODY packets of at most :data:`CHUNK` data bytes (one empty packet for an empty body)."""
    if not body:
        yield encode(R_REPLBODY, b"")
    for start in range(0, len(body), CHUNK):
        yield encode(R_REPLBODY, body[start : start + CHUNK])


def join(packets: Iterable[bytes]) -> bytes:
    return b"".join(packets)
