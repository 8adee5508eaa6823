"""SMTP delivery with aiosmtplib: the smarthost egress, and the connection pool it shares with ``mx``.

One pool per next hop keeps a few authenticated connections open and reuses them for the next
messages (no new TCP + TLS + AUTH per message). A connection that errored is closed, never
reused; after a refused recipient or a failed ``MAIL`` the envelope has already been reset (``RSET``).

On a session that offers PIPELINING (RFC 2920) a copy's ``MAIL``, ``RCPT`` and ``DATA`` go out in
one write and their replies are read together (:class:`_PipelineReader`): one round trip and one
task wake-up instead of three, in the event loop that also runs the ingress.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import aiosmtplib
from aiosmtplib.email import parse_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH, SMTPProtocol

from pipeline.config import EgressSection
from pipeline.contract.headers import crlf_only
from pipeline.egress.base import Copy, DeliveryResult, dsn_of

log = logging.getLogger("smtpgate.egress")
T = TypeVar("T")

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
    if not (copy.mail_from.isascii() and copy.recipient.isascii()):
        opts.append("SMTPUTF8")
    if conn.supports_extension("8bitmime") and not copy.data.isascii():
        opts.append("BODY=8BITMIME")
    return opts


def wire_data(data: bytes, crlf: bool | None = None) -> bytes | None:
    """``data`` as the DATA phase puts it on the wire (dot-stuffed, ending ``CRLF . CRLF``), or
    ``None`` when it holds a bare CR or LF. ``crlf``: the answer of :func:`crlf_only` for these
    bytes when the process that made them checked already (a worker: ``Copy.crlf``), else ``None``.

    aiosmtplib's ``sendmail``/``data`` run two regex passes over every message (line endings,
    then dot-stuffing) and a third for ``SIZE``: about 1 ms per 55 KB copy, in the one event
    loop that also runs the ingress. Our copies are CRLF-only already, so a check (:func:`crlf_only`)
    is enough to prove it, and the result is byte for byte what aiosmtplib would have sent.
    """
    if not (crlf_only(data) if crlf is None else crlf):
        return None
    if data.startswith(b"."):
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


_WIRES: contextvars.ContextVar[dict[int, tuple[bytes, bytes | None]] | None] = contextvars.ContextVar(
    "smtpgate_egress_wires", default=None)
"""The wire forms made during one ``deliver`` of several copies, by identity of the copy's bytes:
copies of a message that no plugin changed per recipient are one ``bytes`` object (the worker's
serialisation is cached and pickled once), so it is checked and dot-stuffed once, not per copy."""


def wire_of(data: bytes, crlf: bool | None = None) -> bytes | None:
    """:func:`wire_data`, made once per bytes object within :func:`sharing_wires`."""
    memo = _WIRES.get()
    if memo is None:
        return wire_data(data, crlf)
    hit = memo.get(id(data))
    if hit is not None and hit[0] is data:
        return hit[1]
    wire = wire_data(data, crlf)
    memo[id(data)] = (data, wire)  # the data is held: its id is not reused meanwhile
    return wire


async def sharing_wires(copies: Sequence[Copy], send: Callable[[Copy], Awaitable[T]]) -> list[T]:
    """``send`` of every copy concurrently, the copies of one bytes object sharing one wire form
    (:func:`wire_of`; the tasks of ``gather`` see the memo through their copied context). The memo
    lives as long as the call: no message is kept afterwards."""
    if len(copies) < 2:
        return [await send(c) for c in copies]
    token = _WIRES.set({})
    try:
        return list(await asyncio.gather(*(send(c) for c in copies)))
    finally:
        _WIRES.reset(token)


# One mailbox character as parse_address lets it through unchanged: no whitespace (Unicode's
# included), no control character, none of the RFC 5322 specials that parseaddr interprets.
_MAILBOX_CHAR = r"[^\s\x00-\x1f\x7f()<>@,;:\\\"\[\]]"
_PLAIN_MAILBOX = re.compile(rf"{_MAILBOX_CHAR}+@{_MAILBOX_CHAR}+")


def mailbox(address: str) -> str:
    """The address as ``aiosmtplib.email.parse_address`` puts it on the wire; raises what it raises.

    ``parse_address`` (``email.utils.parseaddr`` and two regexes) ran twice per address per copy,
    4 % of the main process at 100 recipients per message; the pipelined path now calls it for
    none of ours, command by command ``SMTP.mail``/``rcpt`` still call it once. A plain ``local@domain`` without
    whitespace, controls, quotes, brackets, commas or a second ``@`` comes back from it unchanged
    (tests/test_egress_pipelining.py checks that against parse_address itself), so only anything
    else still goes through it, with its exact result or ``ValueError``.
    """
    if not address or _PLAIN_MAILBOX.fullmatch(address):
        return address
    return parse_address(address)


def _command(verb: bytes, address: str, encoding: str, options: Sequence[str] = ()) -> bytes:
    """``MAIL FROM:<a> opts`` / ``RCPT TO:<a>`` with CRLF, byte for byte as ``SMTP.mail``/``rcpt`` write it,
    with the same ``UnicodeEncodeError``/``ValueError`` for what cannot go on the wire."""
    line = b" ".join([verb + f"<{address}>".encode(encoding), *(o.encode("ascii") for o in options)])
    if COMMAND_INJECTION_REGEX.search(line):
        raise ValueError("Command arg contains a prohibited control character")
    return line + b"\r\n"


async def transact(conn: aiosmtplib.SMTP, copy: Copy) -> str:
    """One single-recipient transaction: the DATA reply's text; raises what ``SMTP.sendmail`` raises.

    CRLF-clean data (all our copies) goes out through :func:`wire_data` without aiosmtplib's
    per-message regex passes: pipelined (:func:`_pipelined`) when the server offers PIPELINING,
    else command by command; anything else through ``sendmail`` as before. After a refused
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
    wire = wire_of(data, copy.crlf)
    protocol = conn.protocol
    if wire is None or protocol is None or not hasattr(protocol, "read_response"):
        _, reply = await conn.sendmail(mail_from, [recipient], data, mail_options=options)
        return reply
    sender, rcpt = mailbox(mail_from), mailbox(recipient)
    if "SMTPUTF8" in options:  # _options' spelling
        if not conn.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
        encoding = "utf-8"
    else:
        encoding = "ascii"
    if conn.supports_extension("size"):
        # RFC 1870 as aiosmtplib counts it: the CRLF-ended message before dot-stuffing.
        size = len(data) if data.endswith(b"\r\n") else len(data) + 2
        options = [f"size={size}", *options]
    if conn.supports_extension("pipelining") and isinstance(protocol, SMTPProtocol):
        commands = _command(b"MAIL FROM:", sender, encoding, options) + _command(b"RCPT TO:", rcpt, encoding)
        return await _pipelined(conn, protocol, copy, commands + b"DATA\r\n", wire)
    try:
        await conn.mail(mail_from, options=options, encoding=encoding)
        try:
            await conn.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPRecipientRefused as exc:
            raise aiosmtplib.SMTPRecipientsRefused([exc]) from None
        response = await _data(conn, protocol, wire)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        await _reset(conn)
        raise
    return response.message


async def _reset(conn: aiosmtplib.SMTP) -> None:
    """``RSET`` after a refusal, as ``sendmail`` does: a lost connection or an odd reply is not the news."""
    try:
        await conn.rset()
    except (ConnectionError, aiosmtplib.SMTPResponseException):
        pass


class _PipelineReader(asyncio.Protocol):
    """The transport's protocol during one pipelined transaction: it keeps every reply.

    aiosmtplib's protocol drops bytes that arrive while no command of its own waits for them, so
    the replies to pipelined commands would be lost there. This one stands in on the transport
    (``set_protocol``; plain and SSL transports both support it) and hands the transport back
    afterwards. Replies are parsed exactly as ``SMTPProtocol._read_response_from_buffer`` does;
    connection loss and flow control are passed on to aiosmtplib's protocol, so the ``SMTP``
    object learns that the connection is gone and its writers stay paused or resumed.

    One reader serves every transaction on its connection (:meth:`of`), so the per-reply time-out
    needs no timer per reply: one timer, re-armed lazily (:meth:`_expire`), covers the waits of
    consecutive transactions; the connection's transactions no longer schedule and cancel two.
    """

    def __init__(self, conn: aiosmtplib.SMTP, inner: SMTPProtocol) -> None:
        self._conn = conn
        self._inner = inner
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: collections.deque[aiosmtplib.SMTPResponse] = collections.deque()
        self._error: aiosmtplib.SMTPException | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._since = 0.0  # when the current wait for a reply began
        self._timer: asyncio.TimerHandle | None = None  # due at or before the current wait's deadline

    @classmethod
    def of(cls, conn: aiosmtplib.SMTP, protocol: SMTPProtocol) -> _PipelineReader:
        """The reader of ``protocol``'s connection, its state reset for a new transaction (as a new one)."""
        reader = cast("_PipelineReader | None", getattr(protocol, "_smtpgate_reader", None))
        if reader is None or reader._conn is not conn or reader._loop is not asyncio.get_running_loop():
            reader = cls(conn, protocol)
            protocol._smtpgate_reader = reader  # type: ignore[attr-defined]
        else:
            reader._buffer.clear()
            reader._replies.clear()
            reader._error = None
        return reader

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        try:
            while (reply := _parse_reply(self._buffer)) is not None:
                self._replies.append(reply)
            if len(self._buffer) > MAX_RESPONSE_LENGTH:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        except aiosmtplib.SMTPResponseException as exc:
            self._buffer.clear()
            self._error = exc
        if self._replies or self._error is not None:
            self._wake(True)

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # the transport closes itself, as with aiosmtplib's protocol

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)
        self._inner.connection_lost(exc)  # aiosmtplib's callback closes the SMTP object

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _fail(self, exc: aiosmtplib.SMTPException) -> None:
        if self._error is None:
            self._error = exc
        self._wake(True)

    def _wake(self, result: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(result)

    async def reply(self) -> aiosmtplib.SMTPResponse:
        """The next reply, within the connection's timeout per reply; on a lost connection, a timeout
        or a malformed reply the connection is closed (the replies can no longer be paired) and the
        error aiosmtplib would raise is raised."""
        if not self._replies and self._error is None:
            loop = self._loop
            waiter = self._waiter = loop.create_future()
            timeout = self._conn.timeout
            if timeout is not None:
                self._since = loop.time()
                deadline = self._since + timeout
                if self._timer is None or self._timer.when() > deadline:  # (a shorter time-out than before)
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = loop.call_at(deadline, self._expire)
            try:
                in_time = await waiter
            finally:
                self._waiter = None
            if not in_time:
                self._conn.close()
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
        if self._replies:
            return self._replies.popleft()
        self._conn.close()
        raise cast(aiosmtplib.SMTPException, self._error)

    def _expire(self) -> None:
        """The timer: the waiting reply is late when its own wait has lasted the time-out, else the
        timer is set again for that wait's deadline; with nothing waiting it is simply dropped."""
        self._timer = None
        waiter, timeout = self._waiter, self._conn.timeout
        if waiter is None or waiter.done() or timeout is None:
            return
        deadline = self._since + timeout
        if self._loop.time() >= deadline:
            waiter.set_result(False)
        else:
            self._timer = self._loop.call_at(deadline, self._expire)

    async def skip(self, count: int) -> bool:
        """Read and drop the replies to the ``count`` commands pipelined behind a refused one (RFC 2920:
        a ``503``/``554`` each); ``False``, with the connection closed, when the session cannot be
        reset: a ``421``, a ``354`` (the server would take the message for nobody), or no reply."""
        try:
            for _ in range(count):
                if (await self.reply()).code in (421, 354):
                    self._conn.close()
                    return False
        except aiosmtplib.SMTPException:
            return False  # reply() closed the connection
        return True


def _parse_reply(buffer: bytearray) -> aiosmtplib.SMTPResponse | None:
    """The first complete reply in ``buffer`` (removed from it), or ``None``: ``code`` and the lines'
    text joined with ``\\n``, exactly as ``SMTPProtocol._read_response_from_buffer`` makes them
    (a line's text is only preceded by ``\\n`` when the text before it is not empty). It works on the
    ``bytearray`` slices themselves: no ``bytes`` copy per line and of the message."""
    message: bytearray | None = None
    offset = 0
    while (end := buffer.find(b"\n", offset)) != -1:
        line = buffer[offset : end + 1]
        if len(line) > MAX_LINE_LENGTH:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        try:
            code = int(line[:3])
        except ValueError:
            text = line.decode("utf-8", errors="ignore")
            raise aiosmtplib.SMTPResponseException(-1, f"Malformed SMTP response line: {text}") from None
        offset = end + 1
        if offset > MAX_RESPONSE_LENGTH:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        text_of_line = line[4:].strip(b" \t\r\n")
        if message is None:
            message = text_of_line
        else:
            if message:
                message += b"\n"
            message += text_of_line
        if line[3:4] != b"-":
            del buffer[:offset]
            return aiosmtplib.SMTPResponse(code, message.decode("utf-8", "surrogateescape"))
    return None


async def _pipelined(conn: aiosmtplib.SMTP, protocol: SMTPProtocol, copy: Copy, commands: bytes, wire: bytes) -> str:
    """``MAIL``, ``RCPT`` and ``DATA`` in one write, then the data: the final reply's text.

    Raises exactly what the command-by-command path raises for each reply (``SMTPSenderRefused``,
    ``SMTPRecipientsRefused``, ``SMTPDataError``, ``SMTPServerDisconnected``, ``SMTPReadTimeoutError``),
    so :func:`send_on` makes the same result of it. The replies to commands pipelined behind a refused
    one are read and dropped, then ``RSET`` goes out as before; after a ``421`` or anything that leaves
    the replies unpaired the connection is closed instead.
    """
    transport = cast(asyncio.Transport, protocol.transport)
    if transport is None or transport.is_closing():
        conn.close()
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    reader = _PipelineReader.of(conn, protocol)
    refusal: aiosmtplib.SMTPException
    reset = False
    transport.set_protocol(reader)
    try:
        transport.write(commands)
        mail = await reader.reply()
        rcpt = start = None
        if mail.code == 250:
            rcpt = await reader.reply()
            if rcpt.code in (250, 251):
                start = await reader.reply()
        if start is not None and start.code == 354:
            if transport.is_closing():
                conn.close()
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            transport.write(wire)
            final = await reader.reply()
            if final.code == 250:
                return final.message
            refusal, reset = aiosmtplib.SMTPDataError(final.code, final.message), final.code != 421
        elif start is not None:
            refusal, reset = aiosmtplib.SMTPDataError(start.code, start.message), start.code != 421
        elif rcpt is not None:
            refused = aiosmtplib.SMTPRecipientRefused(rcpt.code, rcpt.message, copy.recipient)
            refusal, reset = aiosmtplib.SMTPRecipientsRefused([refused]), rcpt.code != 421 and await reader.skip(1)
        else:
            refusal = aiosmtplib.SMTPSenderRefused(mail.code, mail.message, copy.mail_from)
            reset = mail.code != 421 and await reader.skip(2)
        if not reset:
            conn.close()  # a 421 (the server is closing the session; aiosmtplib closes it too) or unpaired replies
    finally:
        transport.set_protocol(protocol)
    if reset:
        await _reset(conn)
    raise refusal


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
        # the results carry "none" already: a copy of the frozen result only for a TLS session
        return result if result.tls == tls else dataclasses.replace(result, tls=tls)
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
        return await sharing_wires(copies, self._one)

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
