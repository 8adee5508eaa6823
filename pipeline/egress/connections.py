"""Connections for direct delivery: opened from a chosen source address to one MX address, with
STARTTLS at the level the destination's policy requires, and pooled per destination site.

:class:`SitePool` caps the connections open to one site from one source address (idle ones
included) and the messages sent on each; an idle connection is reused only for a copy whose MX
list holds its host and whose TLS requirement it satisfies (a verified MTA-STS connection is no
proof for a DANE destination).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib

from pipeline.egress.smtp import IDLE_SECONDS, ConnectFailed, _close, _is_tls_error
from pipeline.egress.tlspolicy import (
    Requirement,
    TlsResult,
    client_context,
    dane_check,
    peer_chain,
    tls_version,
)

log = logging.getLogger("smtpgate.egress")


@dataclass
class MxConnection:
    """One open SMTP session and what it achieved."""

    smtp: aiosmtplib.SMTP
    host: str  # the MX host name (certificates are checked against it)
    address: str  # the IP address connected to
    port: int
    tls: TlsResult
    requirement: Requirement
    uses: int = 0
    since: float = 0.0

    @property
    def relay(self) -> str:
        return f"{self.host}[{self.address}]:{self.port}"


async def open_mx(
    host: str,
    address: str,
    port: int,
    *,
    helo: str,
    source: str | None,
    timeout: float,
    req: Requirement,
    ca_file: str | None,
) -> MxConnection:
    """Connect (bound to ``source``), EHLO, STARTTLS as ``req`` says; :class:`ConnectFailed` with a DSN."""
    relay = f"{host}[{address}]:{port}"
    smtp = aiosmtplib.SMTP(
        hostname=address,
        port=port,
        start_tls=False,
        use_tls=False,
        timeout=timeout,
        local_hostname=helo,
        source_address=(source, 0) if source else None,
    )
    try:
        await smtp.connect()
        await smtp.ehlo()
    except aiosmtplib.SMTPResponseException as exc:
        _close(smtp)
        code = exc.code if 400 <= exc.code < 500 else 421
        raise ConnectFailed(_dsn4(exc), f"{code} {exc.message}", relay) from None
    except aiosmtplib.SMTPTimeoutError:
        _close(smtp)
        raise ConnectFailed("4.4.2", f"connect to {relay}: timed out", relay) from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        _close(smtp)
        cause = exc.__cause__ or exc
        raise ConnectFailed("4.4.1", f"connect to {relay}: {cause}", relay) from None
    result = TlsResult()
    if req.level == "none":
        return MxConnection(smtp, host, address, port, result, req)
    if not smtp.supports_extension("starttls"):
        if req.level == "may" or req.report_only:
            if req.report_only:
                result.source = req.source
                result.problems.append("STARTTLS not offered")
            return MxConnection(smtp, host, address, port, result, req)
        _close(smtp)
        raise ConnectFailed("4.7.4", f"TLS is required for {host} ({req.source}) but {relay} offers no STARTTLS",
                            relay)
    verify = req.level == "verify"
    try:
        await smtp.starttls(server_hostname=host, tls_context=client_context(verify, ca_file))
        if verify:
            result.verified, result.source = True, req.source
        ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
        result.version = tls_version(ssl_object)
        if req.level == "dane" and ssl_object is not None:
            problem = dane_check(peer_chain(ssl_object), req.tlsa, host)
            if problem is not None:
                raise ssl.SSLError(f"DANE: {problem}")
            result.verified, result.source = True, "dane"
    except (ssl.SSLError, ssl.CertificateError, aiosmtplib.SMTPException, OSError) as exc:
        _close(smtp)
        reason = _tls_reason(exc)
        if req.report_only:
            # MTA-STS testing: what enforce would refuse is reported and the copy goes anyway.
            fallback = Requirement("may", req.source)
            conn = await open_mx(host, address, port, helo=helo, source=source, timeout=timeout, req=fallback,
                                 ca_file=ca_file)
            conn.tls.source = req.source
            conn.tls.problems.append(reason)
            conn.requirement = req
            return conn
        if req.level == "may" and (_is_tls_error(exc) or isinstance(exc, aiosmtplib.SMTPException)):
            log.info("STARTTLS with %s failed (%s); delivering without TLS (level may)", relay, reason)
            conn = await open_mx(host, address, port, helo=helo, source=source, timeout=timeout,
                                 req=Requirement("none", req.source), ca_file=ca_file)
            conn.requirement = req  # reusable for the next copies at level may
            return conn
        raise ConnectFailed("4.7.5", f"TLS with {relay} failed ({req.level}, {req.source}): {reason}", relay) from None
    return MxConnection(smtp, host, address, port, result, req)


def _dsn4(exc: aiosmtplib.SMTPResponseException) -> str:
    from pipeline.egress.base import dsn_of

    return dsn_of(exc.code, exc.message).replace("5.", "4.", 1)


def _tls_reason(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate did not verify: {seen.verify_message or seen}"
        if isinstance(seen, ssl.SSLError) and str(seen).startswith("DANE"):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


class SitePool:
    """At most ``limit`` connections open to one site from one source; ``per_connection`` copies each."""

    def __init__(self, limit: int, per_connection: int | None) -> None:
        self.limit = limit
        self.per_connection = per_connection
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[MxConnection] = []
        self.in_use = 0
        self.waiting = 0
        self.opened = 0

    @property
    def open_connections(self) -> int:
        return self.in_use + len(self._idle)

    async def acquire(
        self, accept: Callable[[MxConnection], bool], open_new: Callable[[], Awaitable[MxConnection]]
    ) -> MxConnection:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_use += 1
        now = asyncio.get_running_loop().time()
        for conn in list(self._idle):
            if not conn.smtp.is_connected or now - conn.since >= IDLE_SECONDS:
                self._idle.remove(conn)
                _close(conn.smtp)
            elif accept(conn):
                self._idle.remove(conn)
                return conn
        # A new connection: first close idle ones that would take the total over the limit.
        while self._idle and self.in_use + len(self._idle) > self.limit:
            _close(self._idle.pop(0).smtp)
        try:
            conn = await open_new()
        except BaseException:
            self.in_use -= 1
            self._slots.release()
            raise
        self.opened += 1
        return conn

    def release(self, conn: MxConnection, reusable: bool) -> None:
        conn.uses += 1
        spent = self.per_connection is not None and conn.uses >= self.per_connection
        if reusable and not spent and conn.smtp.is_connected:
            conn.since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        elif spent and reusable and conn.smtp.is_connected:
            # The slot is freed once QUIT is done, so the site never sees one connection too many.
            asyncio.get_running_loop().create_task(self._retire(conn.smtp))
            return
        else:
            _close(conn.smtp)
        self.in_use -= 1
        self._slots.release()

    async def _retire(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await _quit(smtp)
        finally:
            self.in_use -= 1
            self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _quit(conn.smtp)


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(smtp.quit(), 2.0)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        _close(smtp)
