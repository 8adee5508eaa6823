"""The aiosmtpd protocol adapter: one connection's plumbing, under every command.

aiosmtpd does the socket work, STARTTLS and its built-in commands (NOOP, RSET, VRFY, HELP...);
the command loop is our copy of aiosmtpd's (:meth:`SessionBase._command_loop`, the same replies and
line limits, less work per line); this base class adapts it to smtpgate: every reply gets its enhanced status code on the way out (:meth:`push`), a session
between transactions gets ``421 4.3.2`` during shutdown, the connection is admitted (limits,
``on_connect``, IP allow-list) before the greeting, and closing logs one line per session. The
commands themselves are in :mod:`pipeline.ingress.sasl` (AUTH) and
:mod:`pipeline.ingress.server` (HELO to DATA).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, ClassVar, Protocol

from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    SMTP,
    TLSSetupException,
    _AuthMechAttr,
    login_always_fail,
    sanitized_log,
    syntax,
)

from pipeline.chain.accept import AcceptStep
from pipeline.chain.runner import Chain
from pipeline.config import Config, ListenerSection
from pipeline.contract.context import Credential, Session, Transaction
from pipeline.contract.verdicts import Verdict, refuses
from pipeline.events.refusals import RefusalEvents
from pipeline.ingress import replies as R
from pipeline.ingress.limits import ConnectionLimiter, SlidingWindow
from pipeline.ports import Authenticator, Metrics

log = logging.getLogger("smtpgate.ingress")


class Host(Protocol):
    """What a session needs from the service that owns the listeners (shared by its sessions)."""

    config: Config
    chain: Chain
    accept: AcceptStep
    connections: ConnectionLimiter
    auth_failures: SlidingWindow
    sent: SlidingWindow
    sessions: set[Any]
    draining: bool
    metrics: Metrics | None  # /metrics: connections, AUTH failures, refusals by code
    refusals: RefusalEvents | None  # every 4xx/5xx as an aggregated ``rejected`` event

    @property
    def authenticator(self) -> Authenticator: ...

    def admit_connection(self, session: SessionBase) -> str | None: ...

    def session_closed(self) -> None:
        """A session closed or began closing."""
        ...


def refusal(verdict: Verdict | None) -> str | None:
    """The reply for a verdict that refuses the command (Reject / TempFail), else ``None``."""
    return verdict.reply() if refuses(verdict) else None


def with_enhanced_multiline(reply: str) -> str:
    return "\r\n".join(R.with_enhanced(line) for line in reply.split("\r\n"))


_WIRE: dict[str, bytes] = {}
"""reply -> its octets with enhanced codes: most replies are a handful of constants (bounded: a
reply naming a queue id is new each time, so the map starts again when full)."""
_WIRE_SIZE = 256


def wire_reply(reply: str) -> bytes:
    """``with_enhanced_multiline(reply)`` as ASCII octets, remembered for the constant replies."""
    octets = _WIRE.get(reply)
    if octets is None:
        octets = with_enhanced_multiline(reply).encode("ascii", "replace")
        if len(_WIRE) >= _WIRE_SIZE:
            _WIRE.clear()
        _WIRE[reply] = octets
    return octets


GROUPED = frozenset({"MAIL", "RCPT", "RSET"})
"""Commands whose replies may wait to go out with the next reply when the client pipelined (RFC 2920
3.1: a server may buffer the responses to grouped RSET, MAIL and RCPT commands and send them as a
unit; EHLO, DATA, QUIT and NOOP replies go out at once)."""

PHASE_OF = {"HELO": "helo", "EHLO": "helo", "STARTTLS": "helo", "AUTH": "auth", "MAIL": "mail", "RCPT": "rcpt",
            "DATA": "data"}
"""The phase a refusal is reported under (``rejected`` events); other commands are ``command``."""
_PATH = re.compile(r"<([^<>]{0,320})>")


class _Hooks:
    """aiosmtpd needs a handler object; every command it would delegate is overridden."""


_HOOKS = _Hooks()
_aiosmtpd_log = logging.getLogger("mail.log")


class _GuardedCommands(Mapping[str, Callable[[Any], Awaitable[None]]]):
    """aiosmtpd's command table (``SMTP._smtp_methods``) for one session: each command wrapped in
    :meth:`SessionBase._command`, made when the command arrives instead of for all of them at connect."""

    __slots__ = ("_session",)

    def __init__(self, session: SessionBase) -> None:
        self._session = session

    def __getitem__(self, name: str) -> Callable[[Any], Awaitable[None]]:
        session = self._session
        return functools.partial(session._command, name, getattr(session, session._command_attrs[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._session._command_attrs)

    def __len__(self) -> int:
        return len(self._session._command_attrs)


class SessionBase(SMTP):
    """One connection on one listener: replies, hooks, admission, shutdown, logging."""

    def __init__(self, ingress: Host, listener: ListenerSection, tls_context: ssl.SSLContext | None) -> None:
        cfg = ingress.config
        self.ingress = ingress
        self.listener = listener
        self.gw = Session(listener=listener.name)
        self.txn: Transaction | None = None
        self.is_tls = False
        self.tls_info: tuple[str, str, int] | None = None  # protocol, cipher, secret bits (Received:)
        self.rdns = "unknown"
        self._counted = False
        self._raw_push = False
        self._in_command = False
        self._started = time.monotonic()
        self._messages = 0
        self._rejected = 0
        self._end = "closed"
        self._phase = "connect"  # for rejected events: the phase of the command being answered
        # the command being answered, for its refusal's sender and recipient: (name, argument, sender)
        self._subject_cmd: tuple[str, Any, str | None] = ("", None, None)
        self._features: tuple[Credential | None, dict[str, bool]] | None = None  # _features_for's last answer
        self._quit = False  # QUIT answered: the command loop ends
        self._grouped = False  # the command being answered is one of GROUPED
        self._held: list[bytes] = []  # replies to pipelined GROUPED commands, written with the next reply
        self._loop_done = False  # _handle_client has returned (with connection_lost: _release)
        self._writer = None  # type: ignore[assignment]  # aiosmtpd sets it in connection_made
        self._deadline = 0.0  # the idle timeout: loop time after which the connection is cut (_reset_timeout)
        self._construct(
            data_size_limit=cfg.limits.max_message_size,
            hostname=cfg.gateway.hostname,
            tls_context=tls_context if listener.tls == "starttls" else None,
            timeout=cfg.limits.idle_timeout,
            auth_require_tls=listener.require_tls,
        )
        # aiosmtpd keeps this dict on the class and grows it on every EHLO; keep ours private.
        self.command_size_limits = collections.defaultdict(lambda: 512, {"AUTH": 1000})  # type: ignore[misc]
        self.command_size_limit = 512

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The command and AUTH-mechanism tables of a session class, built once for the class.

        aiosmtpd's constructor builds them for every connection with ``dir`` and
        ``inspect.getmembers`` (which also evaluates every property of the session): about 6 %
        of the main thread at one message per connection.
        """
        super().__init_subclass__(**kwargs)
        names = dir(cls)
        cls._command_attrs = {m.replace("smtp_", ""): m for m in names if m.startswith("smtp_")}
        cls._auth_attrs = {
            getattr(getattr(cls, m), "__auth_mechanism_name__", m.replace("auth_", "").replace("__", "-")): m
            for m in names if m.startswith("auth_")
        }

    grouped_replies: ClassVar[frozenset[str]] = GROUPED  # (tests compare with a session that holds none)
    _command_attrs: ClassVar[dict[str, str]] = {}
    _auth_attrs: ClassVar[dict[str, str]] = {}

    def _construct(
        self, *, data_size_limit: int, hostname: str, tls_context: ssl.SSLContext | None, timeout: float,
        auth_require_tls: bool,
    ) -> None:
        """What ``aiosmtpd.smtp.SMTP.__init__`` (1.4.x, pinned) sets up, with the per-class tables.

        Our fixed arguments: no handler hooks, SMTPUTF8 decoding of command arguments as UTF-8
        (surrogateescape) so an 8-bit address gets a precise 553 from our parser instead of
        "strict ASCII mode" (SMTPUTF8 itself is not offered), no proxy protocol, no call limits,
        AUTH not required (smtpgate's own ``smtp_AUTH`` decides). ``tests/test_ingress_units.py``
        checks that this sets the attributes aiosmtpd's constructor sets, to the same values.
        """
        self.__ident__ = "ESMTP smtpgate"
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.event_handler = _HOOKS
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        if tls_context and tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
            _aiosmtpd_log.warning("tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
                                  "this might cause client connection problems")
        elif tls_context and tls_context.check_hostname:
            _aiosmtpd_log.warning("tls_context.check_hostname == True; this might cause client connection problems")
        self.require_starttls = None if tls_context is None else False  # aiosmtpd: tls_context and False
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = login_always_fail
        self._auth_required = False
        # (_auth_methods and _smtp_methods: properties, made when read; see _release)
        self._handle_hooks = {}
        self._ehlo_hook_ver = None
        self._enforce_call_limit = False

    @property
    def _auth_methods(self) -> dict[str, _AuthMechAttr]:  # type: ignore[override]
        """aiosmtpd's AUTH mechanism table, made when read (smtpgate's AUTH does not read it): kept
        on the session, its bound methods would make the session a reference cycle."""
        return {mech: _AuthMechAttr(getattr(self, attr), True) for mech, attr in self._auth_attrs.items()}

    @property
    def _smtp_methods(self) -> _GuardedCommands:  # type: ignore[override]
        """aiosmtpd's command table (its HELP and its own command loop read it), made when read."""
        return _GuardedCommands(self)

    # -- plumbing --------------------------------------------------------------------------
    @property
    def max_command_size_limit(self) -> int:
        return 1000

    @property
    def config(self) -> Config:
        return self.ingress.config

    async def _command(self, name: str, method: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        """Run a command: during shutdown, a session between transactions gets 421 4.3.2."""
        if self.ingress.draining and name != "QUIT" and self.txn is None:
            self._end = "shutdown"
            await self.push(R.SHUTTING_DOWN)
            self.close()
            return
        if name == "QUIT":
            self._end = "quit"
        self._in_command = True
        self._grouped = name in self.grouped_replies
        self._phase = PHASE_OF.get(name, "command")
        txn = self.txn
        self._subject_cmd = (name, arg, txn.mail_from if txn is not None else None)
        try:
            await method(arg)
        finally:
            self._in_command = self._grouped = False
            self._phase = "command"
        if self.ingress.draining and self.txn is None and name != "QUIT":
            self.shut_down()  # shutdown began during the command: 421 now, not at the next one

    @property
    def idle(self) -> bool:
        """Between transactions and not running a command: safe to close with 421 at shutdown."""
        return self.txn is None and not self._in_command

    def close(self) -> None:
        self._flush_held()
        if self.transport is not None:
            self.transport.close()
        self.ingress.session_closed()  # wakes a shutdown waiting for this session

    @property
    def closing(self) -> bool:
        """Closed or being closed (over TLS, closing waits for the client's close_notify)."""
        return self.transport is None or self.transport.is_closing()

    def abort(self) -> None:
        """Cut the connection now, without waiting for the client's TLS close_notify."""
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()

    def shut_down(self) -> None:
        """At shutdown, an idle session: ``421 4.3.2`` and closed at once."""
        self._end = "shutdown"
        self._flush_held()
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(R.SHUTTING_DOWN.encode() + b"\r\n")
        self.close()

    async def push(self, status: str | bytes) -> None:
        """Send a reply; str replies get their enhanced status code here (the one place)."""
        if isinstance(status, str):
            if self._raw_push:
                status = status.encode("ascii", "replace")
            else:
                status = wire_reply(status)
        self._raw_push = False
        if status[:1] in (b"4", b"5"):
            if self.ingress.metrics is not None:  # refusals by code (bounded)
                self.ingress.metrics[f"smtp_refusals_total:{status[:3].decode('ascii', 'replace')}"] += 1
            if self.ingress.refusals is not None:
                cred = self.gw.credential
                sender, recipient = self._subject_of(*self._subject_cmd)
                self.ingress.refusals.note(
                    reply=status.decode("ascii", "replace"), phase=self._phase, client_ip=self.gw.peer_ip,
                    credential=cred.name if cred is not None else None, sender=sender,
                    recipient=recipient, listener=self.listener.name)
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        reader = self._reader
        if self._grouped and reader is not None and b"\n" in reader._buffer:  # type: ignore[attr-defined]
            # the client pipelined: the next command is here already, and it is answered at once
            # (a loop step, no wait for input), so this reply goes out with that one, in one write
            self._held.append(status + b"\r\n")
            return
        if self._held:
            self._held.append(status + b"\r\n")
            writer.write(b"".join(self._held))
            self._held.clear()
        else:
            writer.write(status + b"\r\n")
        # StreamWriter.drain() only does something when the reader failed, the transport is
        # paused (a full send buffer) or the connection is lost: two coroutines per reply otherwise
        paused, lost = self._paused, self._connection_lost  # type: ignore[attr-defined]  # asyncio's FlowControlMixin
        if paused or lost or (reader is not None and reader.exception() is not None):
            await writer.drain()

    def _flush_held(self) -> None:
        """Write the replies held for pipelined commands (before anything else is written, or the
        connection closes)."""
        if self._held:
            if self._writer is not None and not self._writer.is_closing():
                self._writer.write(b"".join(self._held))
            self._held.clear()

    @staticmethod
    def _subject_of(name: str, arg: Any, sender: str | None) -> tuple[str | None, str | None]:
        """Sender and recipient a refusal of this command concerns (the raw path, as the client sent it);
        ``sender``: the transaction's when the command arrived. Worked out only when there is a refusal."""
        if name not in ("MAIL", "RCPT") or not isinstance(arg, str):
            return sender, None
        m = _PATH.search(arg)
        path = m.group(1) if m else None
        return (path, None) if name == "MAIL" else (sender, path)

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

    def _features_for(self, cred: Credential | None) -> dict[str, bool]:
        """The switches before DATA for ``cred``; worked out once per credential of the session (they
        depend only on the config's defaults and the credential; read-only for :meth:`Chain.run`)."""
        cached = self._features
        if cached is not None and cached[0] is cred:
            return cached[1]
        features = self.ingress.chain.features.session(cred)
        self._features = (cred, features)
        return features

    async def _hook(self, phase: str, **kwargs: Any) -> Verdict | None:
        """``chain.run(phase)`` for this session."""
        run = self._phase_run(phase, self.gw.credential, session=self.gw, **kwargs)
        return None if run is None else await run

    async def _run_phase(self, phase: str, cred: Credential | None, **kwargs: Any) -> Verdict | None:
        """``chain.run(phase)`` with ``cred``'s switches."""
        run = self._phase_run(phase, cred, **kwargs)
        return None if run is None else await run

    def _phase_run(
        self, phase: str, cred: Credential | None, **kwargs: Any
    ) -> Coroutine[Any, Any, Verdict | None] | None:
        """The chain's run of ``phase`` with ``cred``'s switches, to await; ``None`` (what it would
        answer) for a phase no plugin implements, which so costs no coroutine. Not a coroutine
        itself: awaited through :meth:`_hook`, a command's hook costs one coroutine, not two."""
        chain = self.ingress.chain
        if not chain.calls(phase):
            return None
        return chain.run(phase, features=self._features_for(cred), **kwargs)

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self.txn = None

    def _sequence_reply(self, *, mail: bool = False, rcpt: bool = False) -> str | None:
        """The reply to a command sent before its prerequisites (HELO, then MAIL, then RCPT), or
        ``None`` (a plain check: MAIL, RCPT and DATA await nothing when the order is right)."""
        assert self.session is not None
        if not self.session.host_name:
            return R.NEED_HELO
        if mail and self.txn is None:
            return R.NEED_MAIL
        if rcpt and self.txn is not None and not self.txn.rcpt_tos:
            return R.NEED_RCPT
        return None

    async def _out_of_sequence(self, *, mail: bool = False, rcpt: bool = False) -> bool:
        """Answer a command sent before its prerequisites (HELO, then MAIL, then RCPT); True if so."""
        reply = self._sequence_reply(mail=mail, rcpt=rcpt)
        if reply is None:
            return False
        await self.push(reply)
        return True

    # -- connection ------------------------------------------------------------------------
    def _note_tls(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        self.is_tls = True
        self.gw.tls = True
        cipher = ssl_object.cipher()
        if cipher is not None:
            self.tls_info = (ssl_object.version() or cipher[1], cipher[0], int(cipher[2]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starttls = self._original_transport is not None
        super().connection_made(transport)
        self._client_connected_cb = None  # called once, above; kept, a bound method makes a cycle
        if starttls:
            # RFC 3207 4.2: forget what the client told us before TLS (EHLO, AUTH), keep the peer.
            self._note_tls(transport)
            self.is_tls = self.gw.tls = True
            self.gw.helo = None
            self.gw.credential = self.ingress.authenticator.match_ip(self.gw.peer_ip)
            self.data_size_limit = self.config.limits.max_message_size
            return
        peer = transport.get_extra_info("peername") or ("", 0)
        self.gw.peer = (str(peer[0]), int(peer[1]))
        if transport.get_extra_info("ssl_object") is not None:  # implicit TLS: aiosmtpd doesn't know (#274/#281)
            self._note_tls(transport)
            assert self.session is not None
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object"),
                                "cipher": transport.get_extra_info("cipher")}
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
            if self._loop_done:
                self._release()

    def _release(self) -> None:
        """The connection is gone and the command loop has ended: drop the stream writer, whose
        reference back to this protocol was the last reference cycle of a session, so the session
        and what it holds (buffers, transport, message) are freed at once by reference counting
        instead of waiting for the cyclic garbage collector (whose passes over every connection's
        leftovers were part of the main process's time per message). The finished command-loop task
        goes too: cancelled (the client went away), it holds the traceback of its frames."""
        self._writer = None  # type: ignore[assignment]
        self._handler_coroutine = None

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Push the idle deadline back (every command, every DATA read).

        aiosmtpd cancels the timer and schedules a new one each time: a timer object, a heap push
        and a cancelled entry left in the loop's heap for the whole idle timeout (300 s), per
        command. Here the connection keeps one timer; activity only moves the deadline, and the
        timer, when it fires early, sleeps again until the deadline.
        """
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._idle_check)

    def _hold_idle_timer(self) -> None:
        """The client waits for us (its message is being admitted and spooled): the idle timeout is
        the client's time, as Postfix's ``smtpd_timeout`` is, so it stops until :meth:`_reset_timeout`.

        Why: with the deadline counted from the last DATA read, an admission slower than what is
        left of the timeout (a milter-like hook, a loaded machine, a short ``idle_timeout``) cut the
        session with 421 while its message was being queued, and the client, told to retry, sent it
        twice."""
        self._deadline = math.inf

    def _idle_check(self) -> None:
        """The timer fired: idle since the deadline, or busy since (then wait for the new deadline)."""
        if self._deadline == math.inf:  # held: look again a timeout later (connection_lost cancels it)
            self._timeout_handle = self.loop.call_at(self.loop.time() + self._timeout_duration, self._idle_check)
            return
        if self.loop.time() >= self._deadline:
            self._timeout_cb()
        else:
            self._timeout_handle = self.loop.call_at(self._deadline, self._idle_check)

    def _timeout_cb(self) -> None:
        self._end = "idle timeout"
        try:
            handshaking = self._tls_protocol is not None and not self.is_tls  # no plaintext inside TLS
            if self._writer is not None and not self._writer.is_closing() and not handshaking:
                self._flush_held()
                self._writer.write(R.IDLE_TIMEOUT.encode() + b"\r\n")
        finally:
            super()._timeout_cb()

    async def _handle_client(self) -> None:
        try:
            await self._serve_client()
        finally:
            self._loop_done = True
            if self.transport is None:  # the connection is gone already (connection_lost ran)
                self._release()

    async def _serve_client(self) -> None:
        try:
            reply = await self._admit()
        except Exception as exc:  # fail closed, and never leave a client without a greeting
            log.error("session=%s peer=%s connect phase failed: %s: %s", self.gw.session_id, self.gw.peer_ip,
                      type(exc).__name__, exc)
            reply = "421 4.3.0 Temporary local problem, try again later"
        if reply is not None:
            self._end = f"refused ({reply[:3]})"
            await self.push(reply)
            self.close()
            return
        self._phase = "command"  # admitted: from now on a refusal belongs to a command
        self._raw_push = True  # the greeting: "220 <hostname> ESMTP smtpgate", no enhanced code
        await self._command_loop()

    async def _command_loop(self) -> None:
        """aiosmtpd's ``SMTP._handle_client`` (1.4.x, pinned) after the PROXY step we never enable, with
        our fixed settings: the same replies, checks and ``mail.log`` lines in the same order.

        Why our own copy: aiosmtpd formats two log calls per command line (sanitising the line) whose
        level is off, looks the command up through its method table, and ends a session at QUIT by
        cancelling its own task (the next read raises). Here the command goes straight to
        :meth:`_command`, and the loop ends once QUIT is answered.
        """
        assert self.session is not None
        await self.push(f"220 {self.hostname} {self.__ident__}")
        bogus_budget = BOGUS_LIMIT
        reader = self._reader
        attrs = self._command_attrs
        while self.transport is not None and not self._quit:
            try:
                if self._held and b"\n" not in reader._buffer:  # type: ignore[attr-defined]
                    self._flush_held()  # (held only while a line is here; never wait for input with them)
                try:
                    line: bytes = await reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    # Line too long. Read until end of line before sending 500.
                    await reader.read(error.consumed)
                    while True:
                        try:
                            await reader.readuntil()
                            break
                        except asyncio.LimitOverrunError as e:
                            await reader.read(e.consumed)
                            continue
                    await self.push("500 Command line too long")
                    continue
                if _aiosmtpd_log.isEnabledFor(logging.INFO):  # (off: DEBUG is too, one look per line)
                    if _aiosmtpd_log.isEnabledFor(logging.DEBUG):
                        sanitized_log(_aiosmtpd_log.debug, "_handle_client readline: %r", line)
                    sanitized_log(_aiosmtpd_log.info, "%r >> %r", self.session.peer, line.rstrip(b"\r\n"))
                line = line.rstrip(b"\r\n")
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode(encoding="ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                # SMTPUTF8 decoding (enable_SMTPUTF8): an 8-bit argument keeps its octets
                arg = str(arg_bytes.strip(), encoding="utf-8", errors="surrogateescape") if arg_bytes else None
                max_sz = (self.command_size_limits[command] if self.session.extended_smtp
                          else self.command_size_limit)
                if len(line) > max_sz:
                    await self.push("500 Command line too long")
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 Command refused due to lack of security")
                    continue
                if self.require_starttls and not self._tls_protocol and command not in ALLOWED_BEFORE_STARTTLS:
                    await self.push("530 Must issue a STARTTLS command first")
                    continue
                attr = attrs.get(command)
                if attr is None:
                    _aiosmtpd_log.warning("%r unrecognised: %s", self.session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        _aiosmtpd_log.warning("%r too many bogus commands", self.session.peer)
                        await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                        self.transport.close()
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                self._reset_timeout()  # a valid command: the idle timer starts again
                await self._command(command, getattr(self, attr), arg)
            except asyncio.CancelledError:
                # The connection got reset during the DATA command.
                _aiosmtpd_log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except ConnectionResetError:
                _aiosmtpd_log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except Exception as error:
                status = None
                try:
                    status = await self.handle_exception(error)
                except Exception as inner_error:
                    try:
                        _aiosmtpd_log.exception("%r Exception in handle_exception()", self.session.peer)
                        status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
                    except Exception:
                        status = "500 Error: Cannot describe error"
                finally:
                    if isinstance(error, TLSSetupException):
                        self.transport.close()
                        self.connection_lost(error)
                    else:
                        await self.push(status)  # type: ignore[arg-type]

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str) -> None:
        """aiosmtpd's QUIT (no handler hook), ending the command loop instead of cancelling its task."""
        if arg:
            await self.push("501 Syntax: QUIT")
        else:
            await self.push("221 Bye")
            self._quit = True
            assert self.transport is not None
            self.transport.close()

    async def _admit(self) -> str | None:
        """Limits, shutdown, ``on_connect`` and the IP allow-list: a refusal reply, or ``None``."""
        reply = self.ingress.admit_connection(self)
        if reply is None:
            self._counted = True
            reply = refusal(await self._hook("on_connect"))
            if reply is None:
                cred = self.ingress.authenticator.match_ip(self.gw.peer_ip)
                if cred is not None:
                    verdict = await self._run_phase("on_auth", cred, session=self.gw, credential=cred)
                    if refusal(verdict) is None:
                        self.gw.credential = cred
                    else:
                        log.info("session=%s on_auth refused allow-listed credential %s: %s",
                                 self.gw.session_id, cred.name, refusal(verdict))
                if self.config.gateway.reverse_dns:
                    self.rdns = await self._reverse_dns()
        return reply

    async def _reverse_dns(self) -> str:
        """The client's reverse DNS name for the ``Received:`` header (``unknown`` if none within 5 s)."""
        try:
            host, _ = await asyncio.wait_for(
                asyncio.get_running_loop().getnameinfo((self.gw.peer_ip, 0), socket.NI_NAMEREQD), 5.0)
        except (OSError, TimeoutError):
            return "unknown"
        return host
