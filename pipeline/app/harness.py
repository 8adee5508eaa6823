"""Helpers to test against a real ingress: start one on ephemeral ports, and speak raw SMTP to it.

    async with running_ingress(config) as (gateway, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        assert (await d.reply()).code == 220
        r = await d.cmd("EHLO me")
        assert "PIPELINING" in r.lines

The dialogue driver reads complete (multi-line) replies, so a test can check every reply of a
seed's session, and wraps the socket in TLS for STARTTLS or implicit TLS.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.app.gateway import Gateway
from pipeline.config import Config, parse_config
from pipeline.ingress.service import IngressService

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass
class Reply:
    """One complete SMTP reply."""

    code: int
    lines: list[str]  # text of each line, without the code

    @property
    def text(self) -> str:
        return self.lines[-1] if self.lines else ""

    @property
    def enhanced(self) -> str | None:
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        return first if _ENHANCED.match(first) else None

    def __str__(self) -> str:
        return "\n".join(f"{self.code} {line}" for line in self.lines)


class Dialogue:
    """A raw SMTP client: send a line, read the full reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout: float = 10.0
    ) -> Dialogue:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname="localhost" if tls else None), timeout
        )
        return cls(reader, writer, timeout)

    async def reply(self) -> Reply:
        """Read one reply (all its lines); raises ``ConnectionError`` if the server closed."""
        code: int | None = None
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not raw:
                raise ConnectionError("server closed the connection" + (f" after {lines}" if lines else ""))
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise ValueError(f"not an SMTP reply line: {line!r}")
            code = int(line[:3])
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return Reply(code, lines)

    async def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        self.writer.write(data if isinstance(line, bytes) else data + b"\r\n")
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> Reply:
        await self.send(line)
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext) -> Reply:
        r = await self.cmd("STARTTLS")
        if r.code == 220:
            await asyncio.wait_for(self.writer.start_tls(context, server_hostname="localhost"), self.timeout)
        return r

    async def closed(self) -> bool:
        """Whether the server has closed the connection (EOF within the timeout)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), self.timeout)
        except (ConnectionError, ssl.SSLError):
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


@asynccontextmanager
async def running_ingress(
    config: Config, extra_plugins: Sequence[Any] = (), *, grace: float = 5.0
) -> AsyncIterator[tuple[Gateway, IngressService]]:
    """A gateway with only its ingress service running (no delivery workers)."""
    gateway = Gateway(config, list(extra_plugins))
    ingress = gateway.ingress_service()
    gateway.services = [ingress]
    await gateway.start()
    try:
        yield gateway, ingress
    finally:
        await gateway.stop(grace)


TEST_LISTENERS = [
    {"name": "plain", "port": 0, "tls": "none", "require_tls": False},
    {"name": "starttls", "port": 0, "tls": "starttls"},
    {"name": "smtps", "port": 0, "tls": "implicit"},
]


def ingress_test_config(
    data_dir: Path, tls_cert: tuple[Path, Path] | None = None, *, chain: Sequence[str] = (), **sections: Any
) -> Config:
    """A config for tests: three listeners on port 0 (plain, STARTTLS, implicit TLS), hostname gw.test."""
    data: dict[str, Any] = {
        "gateway": {"hostname": "gw.test", "data_dir": str(data_dir)},
        "listeners": TEST_LISTENERS,
        "chain": {"plugins": list(chain)},
    }
    if tls_cert is not None:
        data["tls"] = {"cert_file": str(tls_cert[0]), "key_file": str(tls_cert[1])}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, "<test>")


def client_tls(tls_cert: tuple[Path, Path]) -> ssl.SSLContext:
    """A verifying client context that trusts the test certificate."""
    return ssl.create_default_context(cafile=str(tls_cert[0]))


def spooled(data_dir: Path) -> list[dict[str, Any]]:
    """Every message in the spool (queue id, envelope, bytes, context), oldest first."""
    conn = sqlite3.connect(str(data_dir / "spool.db"))
    try:
        rows = conn.execute("SELECT queue_id, mail_from, data, context FROM messages ORDER BY created_at").fetchall()
        out = []
        for queue_id, mail_from, data, context in rows:
            rcpts = [r[0] for r in conn.execute(
                "SELECT recipient FROM recipients WHERE queue_id = ? ORDER BY recipient", (queue_id,))]
            out.append({"queue_id": queue_id, "mail_from": mail_from, "data": bytes(data),
                        "context": json.loads(context), "recipients": rcpts})
        return out
    except sqlite3.OperationalError:  # no spool yet
        return []
    finally:
        conn.close()
