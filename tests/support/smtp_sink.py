"""A real SMTP sink for tests: an aiosmtpd Controller on 127.0.0.1, port 0 (read back after bind).

It records every accepted copy, can answer RCPT with scripted replies per recipient (a 4xx
first, then 2xx...), and optionally requires STARTTLS and AUTH.
"""

from __future__ import annotations

import atexit
import email
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None

    def header(self, name: str) -> str | None:
        return email.message_from_bytes(self.data).get(name)


@dataclass
class SinkHandler:
    replies: dict[str, list[str]] = field(default_factory=dict)  # rcpt -> scripted RCPT replies, in order
    messages: list[Received] = field(default_factory=list)
    rcpt_log: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    known: set[str] | None = None  # when set, RCPT for anyone else gets 550 5.1.1
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        with self.cond:
            self.rcpt_log.append(address)
            script = self.replies.get(address.lower())
            reply = script.pop(0) if script else None
            self.cond.notify_all()
        if reply is None and self.known is not None and address.lower() not in self.known:
            reply = f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if reply and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        auth = getattr(session, "auth_data", None)
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        rec = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content,
                       session.ssl is not None, login)
        with self.cond:
            self.messages.append(rec)
            self.cond.notify_all()
        return "250 2.0.0 Ok: queued"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        with self.cond:
            self.commands.append("RSET")
        return "250 OK"

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


class SinkController(Controller):
    """Controller bound to an ephemeral port chosen by the kernel."""

    def __init__(self, handler: SinkHandler, **kwargs: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self._sock.getsockname()[1], **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


def password_authenticator(user: str, password: str) -> Callable[..., AuthResult]:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and (
            auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    return check


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def start_sink(
    *,
    tls: tuple[Path, Path] | None = None,
    require_starttls: bool = False,
    auth: tuple[str, str] | None = None,
    replies: dict[str, list[str]] | None = None,
    known: set[str] | None = None,
) -> tuple[SinkController, SinkHandler]:
    handler = SinkHandler(replies={k.lower(): list(v) for k, v in (replies or {}).items()}, known=known)
    kwargs: dict[str, Any] = {"data_size_limit": 0}
    if tls:
        kwargs["tls_context"] = server_tls(*tls)
        kwargs["require_starttls"] = require_starttls
    if auth:
        kwargs["authenticator"] = password_authenticator(*auth)
        kwargs["auth_require_tls"] = True
        kwargs["auth_required"] = True
    controller = SinkController(handler, **kwargs)
    controller.start()
    return controller, handler


# -- events ------------------------------------------------------------------------------

import asyncio  # noqa: E402
from typing import ClassVar  # noqa: E402

from pipeline import Event, Plugin, Verdict, hookimpl  # noqa: E402


class EventRecorder(Plugin):
    """An ``on_event`` plugin that keeps every event, so tests can wait for the ones they expect."""

    name = "event_recorder"
    events: ClassVar[list[Event]] = []
    changed: ClassVar[asyncio.Event | None] = None

    @hookimpl
    def on_event(self, event: Event) -> None:
        EventRecorder.events.append(event)
        if EventRecorder.changed is not None:
            EventRecorder.changed.set()

    @classmethod
    def reset(cls) -> None:
        cls.events = []
        cls.changed = None

    @classmethod
    def of(cls, type_: str, recipient: str | None = None) -> list[Event]:
        return [e for e in cls.events if e.type == type_ and (recipient is None or e.recipient == recipient)]

    @classmethod
    async def until(cls, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        """Wait (bounded) until ``predicate()`` holds, re-checking after every event."""
        if cls.changed is None:
            cls.changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while not predicate():
                cls.changed.clear()
                await cls.changed.wait()


FAST_RETRIES: dict[str, Any] = {"retry_min": 0.05, "retry_max": 0.2, "lifetime": 60.0, "poll_interval": 0.05}
"""``[spool]`` timings that let retry tests finish in well under a second."""


_reserved: list[socket.socket] = []


@atexit.register
def _release_reserved() -> None:
    """Close the ports :func:`closed_port` kept bound, when the test process ends (no ResourceWarning)."""
    while _reserved:
        _reserved.pop().close()


def closed_port() -> int:
    """A loopback port nothing listens on: a refused connection.

    The socket stays bound (never listening) until the test process ends, so no server, of this
    process or of another one running tests beside it (pytest-xdist), can take the port meanwhile;
    a connection to a bound port nobody listens on is refused like one to a free port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _reserved.append(s)
    return int(s.getsockname()[1])


def smtp_egress(port: int, **kw: Any) -> dict[str, Any]:
    """An ``[egress]`` table for a plain-SMTP smarthost on 127.0.0.1."""
    return {"type": "smtp", "host": "127.0.0.1", "port": port, "tls": "none", **kw}


def verdict_plugin(name: str, verdict: Verdict, doc: str) -> type[Plugin]:
    """A plugin class whose ``on_personalize`` returns ``verdict`` for every copy."""

    def on_personalize(self: Any, ctx: Any) -> Verdict:
        return verdict

    return type(name.title().replace("_", ""), (Plugin,), {"__doc__": doc, "name": name,
                                                            "on_personalize": hookimpl(on_personalize)})

