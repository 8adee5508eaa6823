"""Address verification: ask the recipient's mail server about an address without sending anything.

Resolve MX, connect, EHLO (STARTTLS when offered), ``MAIL FROM``, ``RCPT TO``; then ``RSET`` and
``QUIT``. ``DATA`` is never sent, so no message can be delivered. If the address is accepted,
a random local part at the same domain is tried too: a server that accepts that as well is a
catch-all, and its "yes" says nothing about the address.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from pipeline.egress.resolver import DnsPermanentError, DnsResolver, DnsTemporaryError, Resolver
from pipeline.egress.smtp import ConnectFailed, open_connection, relay_name

Status = Literal["deliverable", "undeliverable", "unknown", "catch-all"]


@dataclass(frozen=True)
class Verification:
    address: str
    status: Status
    reply: str
    mx: str = ""


async def verify_address(
    address: str,
    *,
    resolver: Resolver | None = None,
    port: int = 25,
    helo: str = "localhost",
    mail_from: str = "",
    timeout: float = 15.0,
) -> Verification:
    """Verify one address; never raises for network or protocol trouble (that is ``unknown``)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c in address for c in " <>\r\n"):
        return Verification(address, "undeliverable", "invalid address syntax")
    resolver = resolver or DnsResolver(timeout=timeout)
    try:
        hosts = await resolver.mx_hosts(domain)
    except DnsPermanentError as exc:
        return Verification(address, "undeliverable", f"{exc.dsn} {exc.reply}")
    except DnsTemporaryError as exc:
        return Verification(address, "unknown", str(exc))
    last = "no mail exchanger"
    for host in hosts:
        try:
            conn = await open_connection(
                host, port, helo=helo, timeout=timeout, tls="opportunistic", verify=False, ca_file=None
            )
        except ConnectFailed as exc:
            last = exc.reply
            continue
        try:
            return await _ask(conn, address, local, domain, mail_from, relay_name(host, conn, port))
        finally:
            await _quit(conn)
    return Verification(address, "unknown", last)


async def _ask(conn: aiosmtplib.SMTP, address: str, local: str, domain: str, mail_from: str, relay: str) -> Verification:
    try:
        mail = await conn.mail(mail_from)
        if mail.code >= 400:
            return _classify(address, mail.code, mail.message, relay)
        rcpt = await conn.rcpt(address)
    except aiosmtplib.SMTPResponseException as exc:
        return _classify(address, exc.code, exc.message, relay)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return Verification(address, "unknown", f"{type(exc).__name__}: {exc}", relay)
    result = _classify(address, rcpt.code, rcpt.message, relay)
    if result.status != "deliverable":
        return result
    probe = f"{secrets.token_hex(8)}-nonexistent@{domain}"
    try:
        probe_reply = await conn.rcpt(probe)
        accepted = probe_reply.code < 300
    except aiosmtplib.SMTPResponseException:
        accepted = False
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return result
    if accepted:
        return Verification(address, "catch-all", f"{rcpt.code} {rcpt.message} (a random address was accepted too)", relay)
    return result


def _classify(address: str, code: int, message: str, relay: str) -> Verification:
    reply = f"{code} {' '.join(message.split())}"
    if 200 <= code < 300:
        return Verification(address, "deliverable", reply, relay)
    if 500 <= code < 600:
        return Verification(address, "undeliverable", reply, relay)
    return Verification(address, "unknown", reply, relay)


async def _quit(conn: aiosmtplib.SMTP) -> None:
    """RSET then QUIT; the transaction is abandoned before DATA whatever happened."""
    try:
        await asyncio.wait_for(conn.rset(), 5)
        await asyncio.wait_for(conn.quit(), 5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        conn.close()


async def verify_addresses(addresses: list[str], **kwargs: object) -> list[Verification]:
    """Verify several addresses concurrently (one connection each)."""
    return list(await asyncio.gather(*(verify_address(a, **kwargs) for a in addresses)))  # type: ignore[arg-type]
