"""An MTA-side milter client for tests, written from the protocol description (Sendmail's
libmilter ``mfdef.h`` / Postfix's MILTER_README), not from smtpgate's own codec: it shares no code
with ``pipeline.milter`` so a mistake there cannot cancel out here.

Each packet: 4-byte big-endian length (command byte included), command byte, data.
:func:`apply` plays the MTA's part at end of message: it applies the header, body and envelope
actions to the message the way Postfix does (index 1 = first occurrence; insert at 0 = top).
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

ALL_ACTIONS = 0x1FF  # every SMFIF_* of version 6
ALL_STEPS = 0x1FFFFF  # every SMFIP_* of version 6, as Postfix offers them
FINAL = {b"a", b"c", b"d", b"r", b"t", b"y"}  # accept continue discard reject tempfail replycode


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">L", 1 + len(data)) + cmd + data


def cstr(*parts: str | bytes) -> bytes:
    return b"".join((p if isinstance(p, bytes) else p.encode()) + b"\x00" for p in parts)


@dataclass
class Negotiated:
    version: int
    actions: int
    steps: int
    macros: dict[int, str] = field(default_factory=dict)


class MilterClient:
    """One MTA connection to a milter."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.neg: Negotiated | None = None

    @classmethod
    async def tcp(cls, host: str, port: int) -> MilterClient:
        return cls(*await asyncio.open_connection(host, port))

    @classmethod
    async def unix(cls, path: str) -> MilterClient:
        return cls(*await asyncio.open_unix_connection(path))

    async def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.writer.write(packet(cmd, data))
        await self.writer.drain()

    async def read(self, timeout: float = 60.0) -> tuple[bytes, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
        (n,) = struct.unpack(">L", head)
        body = await asyncio.wait_for(self.reader.readexactly(n), timeout)
        return body[:1], body[1:]

    async def eof(self, timeout: float = 10.0) -> bool:
        """True when the milter closed the connection (after any pending bytes)."""
        data = await asyncio.wait_for(self.reader.read(), timeout)
        return data == b""

    async def negotiate(
        self, actions: int = ALL_ACTIONS, steps: int = ALL_STEPS, version: int = 6
    ) -> Negotiated:
        await self.send(b"O", struct.pack(">LLL", version, actions, steps))
        cmd, data = await self.read()
        assert cmd == b"O", cmd
        v, a, s = struct.unpack(">LLL", data[:12])
        macros, rest = {}, data[12:]
        while rest:
            (stage,) = struct.unpack(">L", rest[:4])
            names, _, rest = rest[4:].partition(b"\x00")
            macros[stage] = names.decode()
        self.neg = Negotiated(v, a, s, macros)
        return self.neg

    def wants_reply(self, no_reply_bit: int) -> bool:
        assert self.neg is not None
        return not self.neg.steps & no_reply_bit

    async def event(self, cmd: bytes, data: bytes, no_reply_bit: int = 0) -> list[tuple[bytes, bytes]]:
        """Send one event; read replies up to the final one (none when the milter negotiated no reply)."""
        await self.send(cmd, data)
        if no_reply_bit and not self.wants_reply(no_reply_bit):
            return []
        out = []
        while True:
            reply = await self.read()
            out.append(reply)
            if reply[0] in FINAL:
                return out

    async def macro(self, stage: bytes, **values: str) -> None:
        parts: list[str] = []
        for name, value in values.items():
            parts += [name if len(name) == 1 else "{" + name + "}", value]
        await self.send(b"D", stage + cstr(*parts))

    async def connect(
        self,
        host: str = "client.example",
        addr: str = "192.0.2.10",
        port: int = 40000,
        macro_addr: str | None = None,
    ) -> list:
        await self.macro(b"C", client_addr=macro_addr or addr, client_port=str(port), j="mta.test")
        return await self.event(b"C", cstr(host) + b"4" + struct.pack(">H", port) + cstr(addr), 0x1000)

    async def helo(self, name: str = "client.example", **macros: str) -> list:
        if macros:
            await self.macro(b"H", **macros)
        return await self.event(b"H", cstr(name), 0x2000)

    async def mail(self, sender: str, *params: str, **macros: str) -> list:
        await self.macro(b"M", i="QID1", mail_addr=sender, **macros)
        return await self.event(b"M", cstr(f"<{sender}>", *params), 0x4000)

    async def rcpt(self, rcpt: str) -> list:
        await self.macro(b"R", rcpt_addr=rcpt)
        return await self.event(b"R", cstr(f"<{rcpt}>"), 0x8000)

    async def message(self, raw: bytes) -> list[tuple[bytes, bytes]]:
        """Headers one by one (value as Postfix sends it: folds as LF, leading space kept when
        negotiated), the body in 65535-byte chunks, then end of message: every reply."""
        assert self.neg is not None
        head, _, body = raw.partition(b"\r\n\r\n")
        fields: list[bytes] = []
        for line in head.split(b"\r\n"):
            if line[:1] in (b" ", b"\t"):
                fields[-1] += b"\n" + line
            else:
                fields.append(line)
        for f in fields:
            name, _, value = f.partition(b":")
            if not self.neg.steps & 0x100000 and value.startswith(b" "):
                value = value[1:]
            await self.event(b"L", name + b"\x00" + value + b"\x00", 0x80)
        for i in range(0, len(body), 65535):
            await self.event(b"B", body[i : i + 65535], 0x80000)
        return await self.event(b"E", b"")

    async def close(self) -> None:
        try:
            await self.send(b"Q")
        except (ConnectionError, OSError):
            pass
        self.writer.close()


def apply(
    raw: bytes, replies: list[tuple[bytes, bytes]], leadspc: bool = True
) -> tuple[bytes, dict[str, list[str]]]:
    """The message and envelope changes after the MTA applies the milter's end-of-message actions."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[list[bytes]] = []  # [name, value-with-folding-as-CRLF]
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            fields[-1][1] += b"\r\n" + line
        else:
            name, _, value = line.partition(b":")
            fields.append([name, value])
    sep = b"" if leadspc else b" "
    new_body: bytes | None = None
    env: dict[str, list[str]] = {"from": [], "add": [], "del": []}

    def strings(data: bytes) -> list[bytes]:
        return data.rstrip(b"\x00").split(b"\x00")

    for cmd, data in replies:
        if cmd in (b"h", b"i", b"m"):
            index = struct.unpack(">L", data[:4])[0] if cmd != b"h" else 0
            name, value = strings(data[4:] if cmd != b"h" else data)
            value = sep + value.replace(b"\n", b"\r\n") if value else b""
            if cmd == b"h":
                fields.append([name, value])
            elif cmd == b"i":
                fields.insert(index, [name, value])
            else:
                same = [f for f in fields if f[0].lower() == name.lower()]
                target = same[max(index, 1) - 1]
                if value:
                    target[1] = value
                else:
                    fields.remove(target)
        elif cmd == b"b":
            new_body = (new_body or b"") + data
        elif cmd in (b"e", b"+", b"-"):
            key = {b"e": "from", b"+": "add", b"-": "del"}[cmd]
            env[key].append(strings(data)[0].decode().strip("<>"))
    out = (
        b"\r\n".join(n + b":" + v for n, v in fields) + b"\r\n\r\n" + (body if new_body is None else new_body)
    )
    return out, env


def dkim_key(
    directory: object, domain: str = "example.com", selector: str = "s1"
) -> tuple[str, dict[bytes, bytes]]:
    """A fresh RSA-2048 key file for ``domain`` and the DNS answer dkimpy needs to verify with it."""
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from plugins.dkim_sign import dns_txt_value

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = Path(str(directory)) / f"{domain}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return str(path), {f"{selector}._domainkey.{domain}.".encode(): dns_txt_value(key).encode()}
