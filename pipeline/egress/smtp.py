"""SMTP delivery with aiosmtplib: the smarthost egress, and the connection pool it shares with ``mx``.

One pool per next hop keeps a few authenticated connections open and reuses them for the next
messages (no new TCP + TLS + AUTH per message). A connection that errored is closed, never
reused; after a refused recipient or a failed ``MAIL`` aiosmtplib has already sent ``RSET``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from aiosmtplib.email import parse_address

from pipeline.config import EgressSection
from pipeline.egress.base import Copy, DeliveryResult, dsn_of

log = logging.getLogger("smtpgate.egress")

IDLE_SECONDS = 30.0  # an idle pooled connection older than this is closed instead of reused


class ConnectFailed(Exception):
    """Could not get a usable session with the next hop (connect, TLS, EHLO or AUTH)."""

    def __init__(self, dsn: str, reply: str, relay: str) -> None:
        super().__init__(reply)
        self.dsn = dsn
        self.reply = reply
        self.relay = relay


def relay_name(host: str, conn: aiosmtplib.SMTP | None, port: int) -> str:
    """Postfix's ``host[ip]:port``."""
    ip = host
    if conn is not None and conn.transport is not None:
        peer = conn.transport.get_extra_info("peername")
        if peer:
            ip = peer[0]
    return f"{host}[{ip}]:{port}"


@dataclass
class _Idle:
    conn: aiosmtplib.SMTP
    since: float


class HopPool:
    """Up to ``size`` connections to one next hop; idle ones are reused."""

    def __init__(self, host: str, port: int, size: int, factory: Callable[[], Awaitable[aiosmtplib.SMTP]]) -> None:
        self.host = host
        self.port = port
        self._factory = factory
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Idle] = []

    async def acquire(self) -> aiosmtplib.SMTP:
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        while self._idle:
            idle = self._idle.pop()
            if idle.conn.is_connected and loop.time() - idle.since < IDLE_SECONDS:
                return idle.conn
            _close(idle.conn)
        try:
            return await self._factory()
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: aiosmtplib.SMTP, reusable: bool) -> None:
        if reusable and conn.is_connected:
            self._idle.append(_Idle(conn, asyncio.get_running_loop().time()))
        else:
            _close(conn)
        self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for item in idle:
            try:
                await asyncio.wait_for(item.conn.quit(), 2.0)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                _close(item.conn)


def _close(conn: aiosmtplib.SMTP) -> None:
    try:
        conn.close()
    except Exception:  # closing a broken transport must never take delivery down
        pass


async def open_connection(
    host: str,
    port: int,
    *,
    helo: str,
    timeout: float,
    tls: str,
    verify: bool,
    ca_file: str | None,
    username: str | None = None,
    password: str | None = None,
) -> aiosmtplib.SMTP:
    """Connect, EHLO, TLS as configured, AUTH; raise :class:`ConnectFailed` with a DSN on trouble.

    ``tls``: ``none``, ``starttls`` (required), ``implicit``, or ``opportunistic`` (STARTTLS when
    offered, without certificate checks, falling back to plaintext if the handshake fails).
    """
    start_tls: bool | None = {"none": False, "starttls": True, "implicit": False, "opportunistic": None}[tls]
    validate = verify and tls != "opportunistic"
    conn = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        use_tls=tls == "implicit",
        start_tls=start_tls,
        validate_certs=validate,
        cert_bundle=ca_file if validate else None,
        timeout=timeout,
        local_hostname=helo,
    )
    relay = f"{host}[{host}]:{port}"
    try:
        await conn.connect()
    except (ssl.SSLError, aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected) as exc:
        if tls == "opportunistic" and _is_tls_error(exc):
            return await open_connection(
                host, port, helo=helo, timeout=timeout, tls="none", verify=False, ca_file=None,
                username=username, password=password,
            )
        _close(conn)
        cause = exc.__cause__ or exc
        if _is_tls_error(exc):
            raise ConnectFailed("4.7.5", f"TLS with {host}:{port} failed: {cause}", relay) from None
        raise ConnectFailed("4.4.1", f"connect to {host}:{port}: {cause}", relay) from None
    except aiosmtplib.SMTPTimeoutError:
        _close(conn)
        raise ConnectFailed("4.4.2", f"connect to {host}:{port}: timed out", relay) from None
    except aiosmtplib.SMTPResponseException as exc:
        _close(conn)
        raise ConnectFailed(dsn_of(exc.code, exc.message).replace("5.", "4.", 1), f"{exc.code} {exc.message}", relay) from None
    except aiosmtplib.SMTPException as exc:  # e.g. STARTTLS required but not offered
        _close(conn)
        raise ConnectFailed("4.7.4", f"{host}:{port}: {exc}", relay) from None
    except OSError as exc:
        _close(conn)
        raise ConnectFailed("4.4.1", f"connect to {host}:{port}: {exc.strerror or exc}", relay) from None
    relay = relay_name(host, conn, port)
    if username:
        try:
            await conn.login(username, password or "")
        except aiosmtplib.SMTPException as exc:
            _close(conn)
            code = getattr(exc, "code", 0)
            # Our credentials being refused is our problem, not the recipient's: defer, never bounce.
            raise ConnectFailed("4.7.0", f"AUTH at {relay} failed: {code or ''} {exc}".replace("  ", " "), relay) from None
    return conn


def _is_tls_error(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _options(conn: aiosmtplib.SMTP, copy: Copy) -> list[str]:
    opts = []
    if not (copy.mail_from + copy.recipient).isascii():
        opts.append("SMTPUTF8")
    if conn.supports_extension("8bitmime") and not copy.data.isascii():
        opts.append("BODY=8BITMIME")
    return opts


def wire_data(data: bytes) -> bytes | None:
    """``data`` as the DATA phase puts it on the wire (dot-stuffed, ending ``CRLF . CRLF``), or
    ``None`` when it holds a bare CR or LF.

    aiosmtplib's ``sendmail``/``data`` run two regex passes over every message (line endings,
    then dot-stuffing) and a third for ``SIZE``: about 1 ms per 55 KB copy, in the one event
    loop that also runs the ingress. Our copies are CRLF-only already, so counting is enough to
    prove it, and the result is byte for byte what aiosmtplib would have sent.
    """
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\r") or crlf != data.count(b"\n"):
        return None
    if data.startswith(b"."):
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


async def transact(conn: aiosmtplib.SMTP, copy: Copy) -> str:
    """One single-recipient transaction: the DATA reply's text; raises what ``SMTP.sendmail`` raises.

    CRLF-clean data (all our copies) goes out through :func:`wire_data` without aiosmtplib's
    per-message regex passes; anything else through ``sendmail`` as before. After a refused
    ``MAIL``/``RCPT``/``DATA`` the envelope is reset with ``RSET``, as ``sendmail`` does.
    """
    if conn.is_ehlo_or_helo_needed:  # before the extension checks (SIZE, 8BITMIME, SMTPUTF8)
        try:
            await conn.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not conn.is_connected:
                raise
            await conn.helo()
    mail_from, recipient, data, options = copy.mail_from, copy.recipient, copy.data, _options(conn, copy)
    wire = wire_data(data)
    protocol = conn.protocol
    if wire is None or protocol is None or not hasattr(protocol, "read_response"):
        _, reply = await conn.sendmail(mail_from, [recipient], data, mail_options=options)
        return reply
    parse_address(mail_from)
    parse_address(recipient)
    if any(o.lower() == "smtputf8" for o in options):
        if not conn.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
        encoding = "utf-8"
    else:
        encoding = "ascii"
    if conn.supports_extension("size"):
        # RFC 1870 as aiosmtplib counts it: the CRLF-ended message before dot-stuffing.
        size = len(data) if data.endswith(b"\r\n") else len(data) + 2
        options = [f"size={size}", *options]
    try:
        await conn.mail(mail_from, options=options, encoding=encoding)
        try:
            await conn.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPRecipientRefused as exc:
            raise aiosmtplib.SMTPRecipientsRefused([exc]) from None
        response = await _data(conn, protocol, wire)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        try:
            await conn.rset()
        except (ConnectionError, aiosmtplib.SMTPResponseException):
            pass
        raise
    return response.message


async def _data(conn: aiosmtplib.SMTP, protocol: Any, wire: bytes) -> aiosmtplib.SMTPResponse:
    """``DATA`` then the prepared bytes, as ``SMTPProtocol.execute_data_command`` does minus the regexes.

    The pool hands a connection to one task at a time, so nothing else writes on it meanwhile;
    each ``read_response`` directly follows its ``write`` with no await between them.
    """
    timeout = conn.timeout
    try:
        protocol.write(b"DATA\r\n")
        start = await protocol.read_response(timeout=timeout)
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol.write(wire)
        response = await protocol.read_response(timeout=timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        conn.close()
        raise
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def send_on(conn: aiosmtplib.SMTP, copy: Copy, relay: str) -> tuple[DeliveryResult, bool]:
    """One transaction on an open session: the result, and whether the session may be reused."""
    try:
        reply = await transact(conn, copy)
        return DeliveryResult.from_reply(copy.recipient, 250, reply, relay), True
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0]
        return DeliveryResult.from_reply(copy.recipient, refused.code, refused.message, relay), True
    except aiosmtplib.SMTPServerDisconnected as exc:
        return DeliveryResult.deferred(copy.recipient, "4.4.2", f"lost connection with {relay}: {exc}", relay), False
    except aiosmtplib.SMTPNotSupported as exc:
        return DeliveryResult.bounced(copy.recipient, "5.6.7", f"{relay}: {exc}", relay), True
    except aiosmtplib.SMTPResponseException as exc:
        return DeliveryResult.from_reply(copy.recipient, exc.code, exc.message, relay), exc.code != 421
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        reply = f"conversation with {relay} failed: {exc}"
        return DeliveryResult.deferred(copy.recipient, "4.4.2", reply, relay), False
    except ValueError as exc:  # an address aiosmtplib refuses to put on the wire
        return DeliveryResult.bounced(copy.recipient, "5.1.3", f"bad address syntax: {exc}", relay), True


def tls_outcome(conn: aiosmtplib.SMTP, verified: bool) -> str:
    """``none``, ``TLSv1.3 unverified`` or ``TLSv1.3 verified`` for an open session."""
    ssl_object = conn.transport.get_extra_info("ssl_object") if conn.transport is not None else None
    if ssl_object is None:
        return "none"
    return f"{ssl_object.version()} {'verified' if verified else 'unverified'}"


async def send_copy(pool: HopPool, copy: Copy, verified: bool = False) -> DeliveryResult:
    """One transaction on a pooled connection; :class:`ConnectFailed` when no session could be had.

    ``verified``: the pool's connections check certificates (the outcome says ``verified``).
    """
    conn = await pool.acquire()
    reusable = False
    try:
        tls = tls_outcome(conn, verified)
        result, reusable = await send_on(conn, copy, relay_name(pool.host, conn, pool.port))
        return dataclasses.replace(result, tls=tls)
    finally:
        pool.release(conn, reusable)


class SmtpEgress:
    """A smarthost: every copy goes to one host, over pooled connections.

    A copy whose message demands TLS (``Copy.require_tls``) the configured session does not
    guarantee goes over a pool of its own with STARTTLS required (and certificates verified for
    ``verify``): the demand raises the level for that copy only, and a smarthost that cannot meet
    it defers the copy (4.7.4/4.7.5) instead of taking it in clear.
    """

    def __init__(self, settings: EgressSection, helo: str, name: str = "smtp") -> None:
        self.name = name
        self.settings = settings
        self.helo = settings.helo_name or helo
        self.pool = HopPool(settings.host, settings.port, settings.connections_per_hop, self._connect)
        self._strict: dict[tuple[str, bool], HopPool] = {}  # (tls, verify) -> pool, for raised levels

    async def _connect(self, tls: str | None = None, verify: bool | None = None) -> aiosmtplib.SMTP:
        s = self.settings
        return await open_connection(
            s.host,
            s.port,
            helo=self.helo,
            timeout=s.timeout,
            tls=s.tls if tls is None else tls,
            verify=s.verify_certificates if verify is None else verify,
            ca_file=str(s.ca_file) if s.ca_file else None,
            username=s.username,
            password=s.password,
        )

    def _session(self, require: str | None) -> tuple[HopPool, bool]:
        """The pool a copy goes over and whether its certificates are verified."""
        s = self.settings
        secure = s.tls in ("starttls", "implicit")
        verified = s.verify_certificates and secure
        if require is None or (secure and (verified or require == "encrypt")):
            return self.pool, verified
        tls = s.tls if secure else "starttls"
        verify = verified or require == "verify"
        pool = self._strict.get((tls, verify))
        if pool is None:
            def connect() -> Awaitable[aiosmtplib.SMTP]:
                return self._connect(tls, verify)

            pool = self._strict[(tls, verify)] = HopPool(s.host, s.port, s.connections_per_hop, connect)
        return pool, verify

    async def deliver(self, copies: Sequence[Copy]) -> list[DeliveryResult]:
        return list(await asyncio.gather(*(self._one(c) for c in copies)))

    async def _one(self, copy: Copy) -> DeliveryResult:
        try:
            pool, verified = self._session(copy.require_tls)
            return await send_copy(pool, copy, verified=verified)
        except ConnectFailed as exc:
            return DeliveryResult.deferred(copy.recipient, exc.dsn, exc.reply, exc.relay)

    async def close(self) -> None:
        await self.pool.close()
        for pool in self._strict.values():
            await pool.close()
