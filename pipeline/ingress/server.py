"""One SMTP session: aiosmtpd's protocol, adapted to smtpgate.

aiosmtpd does the socket work, command loop, STARTTLS and line limits; this subclass replaces the
commands whose behaviour the seeds pin down (EHLO, AUTH, MAIL, RCPT, DATA), runs the admission
hooks at each phase, and fixes aiosmtpd's known gaps:

* AUTH on an implicit-TLS listener (aiosmtpd issues #274/#281: it only knows about STARTTLS);
* mechanism names are case-insensitive (enKod sends ``auth plain``) and the LOGIN prompts are
  ``334 VXNlcm5hbWU6`` / ``334 UGFzc3dvcmQ6`` as every seed shows;
* every reply gets an enhanced status code (:func:`~pipeline.ingress.replies.with_enhanced`);
* DATA ends only at ``CRLF . CRLF``; a lone dot next to a bare CR or LF (SMTP smuggling) is
  refused, and the content is normalised to CRLF before anything else sees it.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import logging
import re
import ssl
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, TLSSetupException

from pipeline.chain.admission import admit_message
from pipeline.chain.features import resolve_features
from pipeline.config import ListenerSection
from pipeline.contract.context import Credential, Event, Session, Transaction
from pipeline.contract.message import current_actor
from pipeline.contract.verdicts import Discard, Reject, TempFail, Verdict
from pipeline.ingress import replies as R
from pipeline.ingress.addresses import AddressError, domain_matches, domain_of, parse_path

if TYPE_CHECKING:
    from pipeline.ingress.service import IngressService

log = logging.getLogger("smtpgate.ingress")

_USERNAME_PROMPT = "334 VXNlcm5hbWU6"  # base64("Username:")
_PASSWORD_PROMPT = "334 UGFzc3dvcmQ6"  # base64("Password:")
_DATA_CHUNK = 1 << 20  # DATA is read up to each ".CRLF", or this many bytes at a time
_MAX_LINE = 999  # octets before CRLF: RFC 5321's 998, plus one for a transparency dot


def _refusal(verdict: Verdict | None) -> str | None:
    """The reply for a verdict that stops the command (Reject / TempFail), else ``None``."""
    if isinstance(verdict, Reject | TempFail):
        return verdict.reply()
    return None


def _safe_login(login: str) -> str:
    """A login as it may appear in a log line: never something that looks like a secret."""
    if login.startswith("sg_") or len(login) > 64:
        return "<redacted>"
    return "".join(ch if ch.isprintable() else "?" for ch in login)


def _has_long_line(body: bytes, limit: int = _MAX_LINE) -> bool:
    """Whether a CRLF-delimited line of ``body`` is longer than ``limit`` octets.

    Splitting the whole message into lines was a noticeable part of the main process's time.
    A line longer than ``limit`` covers a whole block of ``(limit + 1) // 2`` octets plus the
    next one, starting at a multiple of that size, so a CRLF in every such block proves there is
    none: a few dozen ``find`` calls for a 55 KB message. A block without one (a long line, or
    just a long header or base64-free stretch) gets the exact check.
    """
    step = (limit + 1) // 2
    find = body.find
    for start in range(0, len(body) - limit + step - 1, step):
        if find(b"\r\n", start, start + step + 1) == -1:
            return max(map(len, body.split(b"\r\n"))) > limit
    return False


_DOT_BEFORE_EOL = re.compile(rb"\.[\r\n]")


def _smuggling(body: bytes) -> bool:
    """Whether DATA (still dot-stuffed) hides a lone dot next to a bare CR or LF (SMTP smuggling).

    ``CRLF . CRLF`` cannot occur inside the body (it ends DATA), so any of these is a dot line
    delimited on at least one side by a bare CR or LF: what the published smuggling attacks send.
    """
    if body.startswith((b".\n", b".\r")):
        return True
    # Anchored on the dot (a literal prefix the regex engine finds with a fast scan): a dot
    # before a CR or LF is rare (a sentence ending a line), and only then is the octet before it
    # looked at. 5-10 times faster over the corpus than scanning for each of the four sequences.
    for m in _DOT_BEFORE_EOL.finditer(body):
        i = m.start()
        if i and body[i - 1] in b"\r\n":
            return True
    return False


class _Hooks:
    """aiosmtpd needs a handler object; every command it would delegate is overridden here."""


class GatewaySMTP(SMTP):
    """The SMTP protocol for one connection on one listener."""

    def __init__(self, ingress: IngressService, listener: ListenerSection, tls_context: ssl.SSLContext | None) -> None:
        cfg = ingress.config
        self.ingress = ingress
        self.listener = listener
        self.gw = Session(listener=listener.name)
        self.txn: Transaction | None = None
        self.is_tls = False
        self._counted = False
        self._raw_push = False
        self._in_command = False
        self._started = time.monotonic()
        self._messages = 0
        self._rejected = 0
        self._end = "closed"
        self._events: list[Event] = []
        self._writer = None  # type: ignore[assignment]  # aiosmtpd sets it in connection_made
        super().__init__(
            _Hooks(),
            data_size_limit=cfg.limits.max_message_size,
            # decode command arguments as UTF-8 (surrogateescape) so an 8-bit address gets a precise
            # 553 from our parser instead of "strict ASCII mode"; SMTPUTF8 itself is not offered.
            enable_SMTPUTF8=True,
            hostname=cfg.gateway.hostname,
            ident="ESMTP smtpgate",
            tls_context=tls_context if listener.tls == "starttls" else None,
            require_starttls=False,
            timeout=cfg.limits.idle_timeout,
            auth_require_tls=listener.require_tls,
            loop=asyncio.get_running_loop(),
        )
        # aiosmtpd keeps this dict on the class and grows it on every EHLO; keep ours private.
        self.command_size_limits = collections.defaultdict(lambda: 512, {"AUTH": 1000})  # type: ignore[misc]
        self.command_size_limit = 512
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._guard(name, method)

    # -- plumbing --------------------------------------------------------------------------
    @property
    def max_command_size_limit(self) -> int:
        return 1000

    @property
    def config(self) -> Any:
        return self.ingress.config

    def _guard(self, name: str, method: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """Wrap a command: during shutdown, a session between transactions gets 421 4.3.2."""

        async def run(arg: Any) -> None:
            if self.ingress.draining and name != "QUIT" and self.txn is None:
                self._end = "shutdown"
                await self.push(R.SHUTTING_DOWN)
                self.close()
                return
            if name == "QUIT":
                self._end = "quit"
            self._in_command = True
            try:
                await method(arg)
            finally:
                self._in_command = False

        return run

    @property
    def idle(self) -> bool:
        """Between transactions and not running a command: safe to close with 421 at shutdown."""
        return self.txn is None and not self._in_command

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def push(self, status: str | bytes) -> None:
        """Send a reply; str replies get their enhanced status code here (the one place)."""
        if isinstance(status, str):
            if not self._raw_push:
                status = with_enhanced_multiline(status)
            status = status.encode("ascii", "replace")
        self._raw_push = False
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(status + b"\r\n")
        await self._writer.drain()

    async def _push_lines(self, lines: list[str]) -> None:
        """A multi-line reply written at once (EHLO), without enhanced codes (RFC 2034 s3)."""
        out = [f"{code}-{text}" for code, text in (("250", t) for t in lines[:-1])]
        out.append(f"250 {lines[-1]}")
        self._raw_push = True
        await self.push("\r\n".join(out))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # the client's failure, not ours: no traceback
            self._end = "TLS handshake failed"
            log.info("session=%s peer=%s STARTTLS handshake failed: %r", self.gw.session_id, self.gw.peer_ip,
                     error.__cause__)
            return R.INTERNAL_ERROR  # aiosmtpd closes the connection instead of sending it
        log.error("session=%s peer=%s internal error: %s: %s", self.gw.session_id, self.gw.peer_ip,
                  type(error).__name__, error, exc_info=error)
        return R.INTERNAL_ERROR

    def _features(self) -> dict[str, bool]:
        features = resolve_features(self.config.features, self.gw.credential)
        return features if isinstance(features, dict) else dict(self.config.features)

    async def _hook(self, phase: str, **kwargs: Any) -> Verdict | None:
        return await self.ingress.gateway.chain.run(phase, features=self._features(), session=self.gw, **kwargs)

    def _auth_allowed(self) -> bool:
        return self.is_tls or not self.listener.require_tls

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self.txn = None

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls = self._original_transport is not None
        super().connection_made(transport)
        if starttls:
            # RFC 3207 4.2: forget what the client told us before TLS (EHLO, AUTH), keep the peer.
            self.is_tls = True
            self.gw.tls = True
            self.gw.helo = None
            self.gw.credential = self.ingress.authenticator.match_ip(self.gw.peer_ip)
            self.data_size_limit = self.config.limits.max_message_size
            return
        peer = transport.get_extra_info("peername") or ("", 0)
        self.gw.peer = (str(peer[0]), int(peer[1]))
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # implicit TLS: aiosmtpd doesn't know (#274/#281)
            self.is_tls = True
            self.gw.tls = True
            assert self.session is not None
            self.session.ssl = {"ssl_object": ssl_object, "cipher": transport.get_extra_info("cipher")}
        self.ingress.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self.ingress.sessions.discard(self)
            if self._counted:
                self._counted = False
                self.ingress.connections.release(self.gw.peer_ip)
                cred = self.gw.credential.name if self.gw.credential else "-"
                log.info(
                    "session=%s peer=%s:%d listener=%s tls=%s helo=%s credential=%s messages=%d rejected=%d "
                    "duration=%.2fs end=%s",
                    self.gw.session_id, self.gw.peer[0], self.gw.peer[1], self.listener.name,
                    "yes" if self.is_tls else "no", self.gw.helo or "-", cred, self._messages, self._rejected,
                    time.monotonic() - self._started, self._end,
                )
            self.ingress.session_closed()

    def _timeout_cb(self) -> None:
        self._end = "idle timeout"
        try:
            handshaking = self._tls_protocol is not None and not self.is_tls  # no plaintext inside TLS
            if self._writer is not None and not self._writer.is_closing() and not handshaking:
                self._writer.write(R.IDLE_TIMEOUT.encode() + b"\r\n")
        finally:
            super()._timeout_cb()

    async def _handle_client(self) -> None:
        try:
            refusal = await self._admit()
        except Exception as exc:  # fail closed, and never leave a client without a greeting
            log.error("session=%s peer=%s connect phase failed: %s: %s", self.gw.session_id, self.gw.peer_ip,
                      type(exc).__name__, exc)
            refusal = "421 4.3.0 Temporary local problem, try again later"
        if refusal is not None:
            self._end = f"refused ({refusal[:3]})"
            await self.push(refusal)
            self.close()
            return
        self._raw_push = True  # the greeting: "220 <hostname> ESMTP smtpgate", no enhanced code
        await super()._handle_client()

    async def _admit(self) -> str | None:
        """Limits, shutdown, ``on_connect`` and the IP allow-list: a refusal reply, or ``None``."""
        refusal = self.ingress.admit_connection(self)
        if refusal is None:
            self._counted = True
            refusal = _refusal(await self._hook("on_connect"))
            if refusal is None:
                cred = self.ingress.authenticator.match_ip(self.gw.peer_ip)
                if cred is not None:
                    verdict = await self.ingress.gateway.chain.run(
                        "on_auth", features=self._features_for(cred), session=self.gw, credential=cred)
                    if _refusal(verdict) is None:
                        self.gw.credential = cred
                    else:
                        log.info("session=%s on_auth refused allow-listed credential %s: %s",
                                 self.gw.session_id, cred.name, _refusal(verdict))
        return refusal

    # -- HELO / EHLO -----------------------------------------------------------------------
    async def _greet(self, verb: str, hostname: str, extended: bool) -> bool:
        """The part HELO and EHLO share: syntax, the ``on_helo`` hook, resetting the session."""
        if not hostname:
            await self.push(f"501 5.5.4 Syntax: {verb} hostname")
            return False
        refusal = _refusal(await self._hook("on_helo", hostname=hostname))
        if refusal:
            await self.push(refusal)
            return False
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = extended
        self.session.host_name = hostname
        self.gw.helo = hostname
        return True

    async def smtp_HELO(self, hostname: str) -> None:
        if await self._greet("HELO", hostname, extended=False):
            self._raw_push = True
            await self.push(f"250 {self.hostname}")

    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._greet("EHLO", hostname, extended=True):
            return
        lines = [self.hostname, "PIPELINING", f"SIZE {self.data_size_limit}", "8BITMIME"]
        if self.tls_context and not self.is_tls:
            lines.append("STARTTLS")
        if self._auth_allowed():
            lines.append("AUTH PLAIN LOGIN")
        lines.append("ENHANCEDSTATUSCODES")
        await self._push_lines(lines)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.is_tls:
            await self.push(R.TLS_ACTIVE)
        elif not self.tls_context:
            await self.push(R.TLS_NOT_AVAILABLE)
        elif arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
        else:
            await super().smtp_STARTTLS(arg)
            if not self.is_tls:
                # The connection was lost (or cut by the idle timeout) mid-handshake: asyncio then
                # wakes the waiter without an error and never calls connection_made, so the reader
                # would wait forever. aiosmtpd's TLSSetupException path closes and cleans up.
                raise TLSSetupException("connection lost during the TLS handshake")

    # -- AUTH ------------------------------------------------------------------------------
    async def _challenge(self, prompt: str) -> bytes | None:
        """Send a 334 prompt and read the client's base64 answer (``None``: reply already sent)."""
        self._raw_push = True
        await self.push(prompt)
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:  # connection closed
            self.close()
            return None
        except asyncio.LimitOverrunError as exc:  # longer than the stream limit
            # read the over-long line to its end: its tail must not be taken for commands
            await self._reader.read(exc.consumed)
            while True:
                try:
                    await self._reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await self._reader.read(more.consumed)
                except asyncio.IncompleteReadError:
                    self.close()
                    return None
            await self.push(R.AUTH_LINE_TOO_LONG)
            return None
        return await self._decode(line.strip())

    async def _decode(self, blob: bytes) -> bytes | None:
        if blob == b"*":
            await self.push(R.AUTH_ABORTED)
            return None
        if blob == b"=":
            return b""
        try:
            return b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            await self.push(R.AUTH_BASE64)
            return None

    async def _out_of_sequence(self, *, mail: bool = False, rcpt: bool = False) -> bool:
        """Answer a command sent before its prerequisites (HELO, then MAIL, then RCPT); True if so."""
        assert self.session is not None
        if not self.session.host_name:
            await self.push(R.NEED_HELO)
        elif mail and self.txn is None:
            await self.push(R.NEED_MAIL)
        elif rcpt and self.txn is not None and not self.txn.rcpt_tos:
            await self.push(R.NEED_RCPT)
        else:
            return False
        return True

    async def smtp_AUTH(self, arg: str | None) -> None:
        assert self.session is not None
        if await self._out_of_sequence():
            return
        if not self.session.extended_smtp:
            await self.push(R.AUTH_NEEDS_EHLO)
            return
        if not self._auth_allowed():
            await self.push(R.ENCRYPTION_REQUIRED)
            return
        if self.session.authenticated:
            await self.push(R.AUTH_ALREADY)
            return
        if self.txn is not None:
            await self.push("503 5.5.1 AUTH not allowed during a mail transaction")
            return
        args = (arg or "").split()
        if not 1 <= len(args) <= 2:
            await self.push(R.AUTH_SYNTAX)
            return
        mechanism = args[0].upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            await self.push(R.AUTH_MECHANISM)
            return
        ip = self.gw.peer_ip
        limit = self.config.limits.auth_failures_per_minute
        if self.ingress.auth_failures.count(ip) >= limit:
            log.warning("session=%s peer=%s AUTH refused: throttled after repeated failures", self.gw.session_id, ip)
            self._end = "auth throttled"
            await self.push(R.AUTH_THROTTLED)
            self.close()
            return
        initial = await self._decode(args[1].encode()) if len(args) == 2 else b""
        if initial is None:
            return
        login_b: bytes | None
        password_b: bytes | None
        if mechanism == "PLAIN":
            response = initial if len(args) == 2 else await self._challenge("334 ")
            if response is None:
                return
            parts = response.split(b"\0")
            if len(parts) != 3:
                await self.push(R.AUTH_PLAIN_FORMAT)
                return
            login_b, password_b = parts[1], parts[2]
        else:
            login_b = initial if len(args) == 2 else await self._challenge(_USERNAME_PROMPT)
            if login_b is None:
                return
            password_b = await self._challenge(_PASSWORD_PROMPT)
            if password_b is None:
                return
        login = login_b.decode("utf-8", "surrogateescape")
        password = password_b.decode("utf-8", "surrogateescape")
        outcome = await self.ingress.authenticator.authenticate(login, password)
        if outcome.credential is None:
            failures = self.ingress.auth_failures.add(ip)
            log.warning(
                "session=%s peer=%s AUTH %s failed: login=%r reason=%s credential=%s failures=%d/min",
                self.gw.session_id, ip, mechanism, _safe_login(login), outcome.reason, outcome.name or "-", failures,
            )
            if failures >= limit:
                self._end = "auth throttled"
                await self.push(R.AUTH_THROTTLED)
                self.close()
            else:
                await self.push(R.AUTH_DISABLED if outcome.reason == "disabled" else R.AUTH_INVALID)
            return
        cred = outcome.credential
        refusal = _refusal(await self.ingress.gateway.chain.run(
            "on_auth", features=self._features_for(cred), session=self.gw, credential=cred))
        if refusal:
            await self.push(refusal)
            return
        self.session.authenticated = True
        self.gw.credential = cred
        if cred.max_message_size:
            self.data_size_limit = min(self.config.limits.max_message_size, cred.max_message_size)
        log.info("session=%s peer=%s AUTH %s ok: credential=%s%s", self.gw.session_id, ip, mechanism, cred.name,
                 " sandbox" if cred.sandbox else "")
        await self.push(R.AUTH_OK)

    def _features_for(self, cred: Credential) -> dict[str, bool]:
        features = resolve_features(self.config.features, cred)
        return features if isinstance(features, dict) else dict(self.config.features)

    # -- MAIL / RCPT -----------------------------------------------------------------------
    @staticmethod
    def _strip_keyword(keyword: str, arg: str | None) -> str | None:
        if arg is None or arg[: len(keyword)].upper() != keyword:
            return None
        return arg[len(keyword):].strip()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self._out_of_sequence():
            return
        assert self.session is not None
        rest = self._strip_keyword("FROM:", arg)
        if rest is None:
            await self.push(R.MAIL_SYNTAX)
            return
        if self.txn is not None:
            await self.push(R.NESTED_MAIL)
            return
        try:
            path = parse_path(rest, allow_null=True)
        except AddressError as exc:
            await self.push(R.MAIL_SYNTAX if exc.kind == "syntax" else R.BAD_SENDER)
            return
        params = dict(path.params)
        body = params.pop("BODY", "7BIT")
        if body is None or body.upper() not in ("7BIT", "8BITMIME"):
            await self.push(R.BAD_BODY)
            return
        size = params.pop("SIZE", None)
        if "SIZE" in path.params:
            if size is None or not size.isdigit():
                await self.push(R.BAD_SIZE)
                return
            if self.data_size_limit and int(size) > self.data_size_limit:
                await self.push(R.TOO_BIG)
                return
        if params or (not self.session.extended_smtp and path.params):
            await self.push(R.MAIL_PARAMS)
            return
        cred = self.gw.credential
        if cred is not None:
            if cred.allowed_sender_domains and path.address and not domain_matches(path.domain, cred.allowed_sender_domains):
                log.info("session=%s credential=%s sender %s rejected: domain not allowed",
                         self.gw.session_id, cred.name, path.address)
                await self.push(R.NOT_OWNED)
                return
            if cred.messages_per_minute and self.ingress.sent.count(cred.name) >= cred.messages_per_minute:
                log.info("session=%s credential=%s rate limit %d/min reached", self.gw.session_id, cred.name,
                         cred.messages_per_minute)
                await self.push(R.RATE_LIMITED)
                return
        txn = Transaction(mail_from=path.address, mail_options=[f"{k}={v}" if v else k for k, v in path.params.items()])
        refusal = _refusal(await self._hook("on_mail_from", transaction=txn, address=path.address))
        if refusal:
            await self.push(refusal)
            return
        assert self.envelope is not None
        self.envelope.mail_from = path.address
        self.txn = txn
        await self.push(R.SENDER_OK)

    def _inbound_handler(self, domain: str) -> Callable[[str, list[str], bytes], Awaitable[None]] | None:
        handlers = self.ingress.gateway.inbound_handlers
        if not handlers:
            return None
        handler = handlers.get(domain)
        if handler is None:
            for name, candidate in handlers.items():
                if name.lower().rstrip(".") == domain:
                    return candidate
        return handler

    def _max_recipients(self) -> int:
        limit = self.config.limits.max_recipients
        cred = self.gw.credential
        if cred is not None and cred.max_recipients:
            limit = min(limit, cred.max_recipients)
        return limit

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._out_of_sequence(mail=True):
            return
        assert self.txn is not None
        rest = self._strip_keyword("TO:", arg)
        if rest is None:
            await self.push(R.RCPT_SYNTAX)
            return
        try:
            path = parse_path(rest, allow_null=False)
        except AddressError as exc:
            await self.push(R.RCPT_SYNTAX if exc.kind == "syntax" else R.BAD_RECIPIENT)
            return
        if path.params:
            await self.push(R.RCPT_PARAMS)
            return
        txn = self.txn
        if len(txn.rcpt_tos) >= self._max_recipients():
            await self.push(R.TOO_MANY_RECIPIENTS)
            return
        inbound = self._inbound_handler(path.domain) is not None
        local = inbound or domain_matches(path.domain, self.config.relay.local_domains)
        authorized = self.gw.credential is not None
        trick = path.relay_trick
        reply: str | None = None
        if local:
            if trick and not authorized:
                reply = R.RELAY_DENIED
        elif not authorized:
            if trick:
                reply = R.RELAY_DENIED
            elif self.listener.require_tls and not self.is_tls:
                reply = R.STARTTLS_FIRST
            else:
                reply = R.AUTH_REQUIRED
        elif self.listener.require_tls and not self.is_tls:
            reply = R.STARTTLS_FIRST
        if reply is not None:
            log.info("session=%s peer=%s RCPT %s refused: %s%s", self.gw.session_id, self.gw.peer_ip,
                     path.address, reply, f" ({trick})" if trick else "")
            await self.push(reply)
            return
        if txn.rcpt_tos and txn.notes.get("inbound") != inbound:
            await self.push(R.SEPARATE_TRANSACTION)
            return
        verdict = await self._hook("on_rcpt_to", transaction=txn, address=path.address)
        refusal = _refusal(verdict)
        if refusal:
            await self.push(refusal)
            return
        if not isinstance(verdict, Discard):
            txn.notes["inbound"] = inbound
            txn.rcpt_tos.append(path.address)
            assert self.envelope is not None
            self.envelope.rcpt_tos.append(path.address)
        await self.push(R.RECIPIENT_OK)

    # -- DATA ------------------------------------------------------------------------------
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self._out_of_sequence(mail=True, rcpt=True):
            return
        assert self.txn is not None
        if arg:
            await self.push(R.DATA_SYNTAX)
            return
        self._raw_push = True
        await self.push(R.START_DATA)
        content = await self._read_data()
        if content is None:
            return
        txn = self.txn
        self._set_post_data_state()
        if isinstance(content, str):
            self._rejected += 1
            await self.push(content)
        else:
            reply = await self._deliver(txn, content)
            await self.push(reply)
            events, self._events = self._events, []
            for event in events:  # after the reply: event plugins must not delay the client
                await self.ingress.gateway.emit(event)
        if self.ingress.draining:
            self._end = "shutdown"
            await self.push(R.SHUTTING_DOWN)
            self.close()

    async def _read_data(self) -> bytes | str | None:
        """The unstuffed message, a refusal reply (the data was read to the end), or ``None`` (lost).

        Reads up to each ``.CRLF`` rather than line by line (a 1,500-line message is a handful of
        reads, not 1,500); the end is the first ``.CRLF`` that starts a line, where a line only
        ever ends with CRLF, as in RFC 5321 (a bare CR or LF never ends a line, let alone DATA).
        The finished body is then checked as a whole: size, line length, smuggling sequences.
        """
        limit = self.data_size_limit or 0
        reader = self._reader
        chunks: list[bytes] = []
        size = 0
        too_big = False
        tail = b"\r\n"  # the last two octets read: the DATA command line ended with CRLF
        saved_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = _DATA_CHUNK  # type: ignore[attr-defined]
        try:
            while True:
                try:
                    piece = await reader.readuntil(b".\r\n")
                    found = True
                except asyncio.LimitOverrunError as exc:
                    piece = await reader.read(exc.consumed)
                    found = False
                except asyncio.IncompleteReadError:
                    self._end = "lost during DATA"
                    self.close()
                    return None
                self._reset_timeout()
                if found:
                    head = piece[:-3]
                    if (tail + head)[-2:] == b"\r\n":  # the dot starts a line: end of DATA
                        if not too_big:
                            chunks.append(head)
                        break
                size += len(piece)
                if not too_big:
                    if limit and size > limit:
                        too_big = True
                        chunks.clear()
                    else:
                        chunks.append(piece)
                tail = (tail + piece)[-2:]
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]
        if too_big:
            return R.TOO_BIG
        body = b"".join(chunks)
        if limit and len(body) > limit:
            return R.TOO_BIG
        if _has_long_line(body):
            return R.LINE_TOO_LONG
        if _smuggling(body):
            log.warning("session=%s peer=%s DATA refused: SMTP smuggling sequence", self.gw.session_id,
                        self.gw.peer_ip)
            return R.SMUGGLING
        if body.startswith(b"."):
            body = body[1:]
        return body.replace(b"\r\n.", b"\r\n")

    async def _deliver(self, txn: Transaction, content: bytes) -> str:
        """Admission, spool, events: the reply to DATA."""
        assert txn.mail_from is not None
        if txn.notes.get("inbound"):
            return await self._deliver_inbound(txn, content)
        gateway = self.ingress.gateway
        cred = self.gw.credential
        verdict, ctx = await admit_message(
            gateway.chain, self.config, content, txn.mail_from, list(txn.rcpt_tos), session=self.gw, credential=cred
        )
        refusal = _refusal(verdict)
        if refusal is not None or ctx is None:
            self._rejected += 1
            log.info("session=%s peer=%s message from=<%s> refused: %s", self.gw.session_id, self.gw.peer_ip,
                     txn.mail_from, refusal)
            return refusal or R.INTERNAL_ERROR
        cred_name = cred.name if cred else None
        if isinstance(verdict, Discard):
            log.info("queue_id=%s session=%s discarded by the chain: %s", ctx.queue_id, self.gw.session_id,
                     verdict.reason)
            for rcpt in ctx.message.rcpt_tos:
                await gateway.emit(Event("discarded", queue_id=ctx.queue_id, recipient=rcpt, credential=cred_name,
                                         campaign_id=ctx.campaign_id, letter_id=ctx.letter_id,
                                         data={"reason": verdict.reason}))
            return R.OK
        sinks = {a.lower() for a in self.config.relay.sink_addresses}
        dropped = [r for r in ctx.message.rcpt_tos if r.lower() in sinks]
        if dropped:
            token = current_actor.set("ingress")
            try:
                for rcpt in dropped:
                    ctx.message.remove_recipient(rcpt)
            finally:
                current_actor.reset(token)
            for rcpt in dropped:
                log.info("queue_id=%s session=%s sink address %s: accepted and dropped", ctx.queue_id,
                         self.gw.session_id, rcpt)
                await gateway.emit(Event("discarded", queue_id=ctx.queue_id, recipient=rcpt, credential=cred_name,
                                         campaign_id=ctx.campaign_id, letter_id=ctx.letter_id,
                                         data={"reason": "sink address"}))
        recipients = ctx.message.rcpt_tos
        if not recipients:
            return R.OK
        data = ctx.message.as_bytes()
        try:
            await gateway.spool.enqueue(ctx, data, recipients)
        except Exception as exc:  # nothing is claimed: the client keeps the message and retries
            log.error("session=%s message from=<%s> not queued: spool error %s: %s", self.gw.session_id,
                      txn.mail_from, type(exc).__name__, exc)
            return R.SPOOL_FAILED
        self._messages += 1
        if cred is not None and cred.messages_per_minute:
            self.ingress.sent.add(cred.name)
        log.info(
            "queue_id=%s session=%s accepted from=<%s> rcpts=%d size=%d credential=%s%s%s",
            ctx.queue_id, self.gw.session_id, txn.mail_from, len(recipients), len(data), cred_name or "-",
            " sandbox" if cred is not None and cred.sandbox else "",
            f" campaign={ctx.campaign_id}" if ctx.campaign_id else "",
        )
        self._events = [
            Event("accepted", queue_id=ctx.queue_id, recipient=r, credential=cred_name,
                  campaign_id=ctx.campaign_id, letter_id=ctx.letter_id, tags=tuple(ctx.tags), metadata=ctx.metadata)
            for r in recipients
        ]
        return R.queued(ctx.queue_id)

    async def _deliver_inbound(self, txn: Transaction, content: bytes) -> str:
        """Mail for a domain the gateway receives itself (bounces): straight to its handler."""
        by_handler: dict[Any, list[str]] = {}
        for rcpt in txn.rcpt_tos:
            handler = self._inbound_handler(domain_of(rcpt))
            by_handler.setdefault(handler, []).append(rcpt)
        for handler, rcpts in by_handler.items():
            if handler is None:  # unregistered since RCPT
                return R.INBOUND_FAILED
            try:
                await handler(txn.mail_from or "", rcpts, content)
            except Exception as exc:
                log.error("session=%s inbound handler for %s failed: %s: %s", self.gw.session_id, rcpts[0],
                          type(exc).__name__, exc)
                return R.INBOUND_FAILED
        self._messages += 1
        log.info("session=%s inbound message from=<%s> to %s handled", self.gw.session_id, txn.mail_from,
                 ",".join(txn.rcpt_tos))
        return R.OK


def with_enhanced_multiline(reply: str) -> str:
    return "\r\n".join(R.with_enhanced(line) for line in reply.split("\r\n"))
