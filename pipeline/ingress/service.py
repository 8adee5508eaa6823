"""The ingress service: listeners, shared limits, and graceful shutdown.

``stop(grace)`` follows what MTAs do on SIGTERM: listeners stay open during the grace period so a
new client hears ``421 4.3.2`` instead of "connection refused" (it retries later rather than
failing over blindly); sessions between transactions get ``421 4.3.2`` at once; sessions in the
middle of a transaction may finish it (their reply to DATA is still durable) and are then closed;
whatever is left when the grace period ends is cut.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import MutableMapping

from pipeline.accounts.authenticator import Authenticator as StoreAuthenticator
from pipeline.accounts.store import CredentialStore, config_records, open_credential_store
from pipeline.chain.accept import AcceptStep
from pipeline.chain.runner import Chain
from pipeline.config import Config, ListenerSection
from pipeline.events.refusals import RefusalEvents
from pipeline.ingress import replies as R
from pipeline.ingress.limits import ConnectionLimiter, SlidingWindow
from pipeline.ingress.server import GatewaySMTP
from pipeline.ingress.session import SessionBase
from pipeline.ingress.tls import server_context
from pipeline.ports import AcceptRecorder, Authenticator, EventSink, InboundHandler, Metrics, SpoolWriter

log = logging.getLogger("smtpgate.ingress")


def credential_store_path(config: Config) -> str:
    return str(config.data_dir / "credentials.db")


class IngressService:
    """The SMTP listeners of one gateway.

    It receives what it hands work to, typed: the chain, the spool writer, the event sink, the
    metrics and the inbound handlers (wrapped in one :class:`~pipeline.chain.accept.AcceptStep`),
    and optionally an authenticator; without one it opens ``<data_dir>/credentials.db`` itself
    at start and closes it at stop.
    """

    name = "ingress"

    def __init__(
        self,
        config: Config,
        chain: Chain,
        *,
        spool: SpoolWriter,
        events: EventSink,
        metrics: Metrics | None = None,
        inbound: MutableMapping[str, InboundHandler] | None = None,
        authenticator: Authenticator | None = None,
        sent: SlidingWindow | None = None,
        refusals: RefusalEvents | None = None,
        recorder: AcceptRecorder | None = None,
    ) -> None:
        self.config = config
        self.chain = chain
        self.metrics = metrics
        self.refusals = refusals  # 4xx/5xx replies as aggregated rejected events (None: not recorded)
        self.accept = AcceptStep(config, chain, spool, events, inbound=inbound, metrics=metrics, recorder=recorder,
                                 alone=self.alone)
        config_records(self.config)  # fail at build time on a bad [[credentials]] entry
        limits = self.config.limits
        self.connections = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)
        self.auth_failures = SlidingWindow(60.0)
        self.sent = sent if sent is not None else SlidingWindow(60.0)  # shared with the HTTP send API
        self.sessions: set[SessionBase] = set()
        self.draining = False
        self.servers: list[tuple[ListenerSection, asyncio.Server]] = []
        self.bound: dict[str, tuple[str, int]] = {}
        self.store: CredentialStore | None = None
        self._authenticator: Authenticator | None = authenticator
        self._owns_authenticator = authenticator is None
        self._closed = asyncio.Event()

    @property
    def authenticator(self) -> Authenticator:
        if self._authenticator is None:
            raise RuntimeError("ingress not started")
        return self._authenticator

    def port(self, listener: str) -> int:
        """The bound port of a listener (after ``start``; tests bind port 0)."""
        return self.bound[listener][1]

    async def start(self) -> None:
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
        if self._owns_authenticator:
            self.store = open_credential_store(self.config)
            self._authenticator = StoreAuthenticator(self.config, self.store)
        tls: ssl.SSLContext | None = None
        if any(listener.tls != "none" for listener in self.config.listeners):
            tls = server_context(self.config)
        loop = asyncio.get_running_loop()
        try:
            for i, listener in enumerate(self.config.listeners):
                name = listener.name or f"{listener.address}:{listener.port}"
                if name in self.bound:
                    name = f"{name}#{i}"
                listener = listener.model_copy(update={"name": name})

                def factory(listener: ListenerSection = listener) -> GatewaySMTP:
                    return GatewaySMTP(self, listener, tls)

                try:
                    server = await loop.create_server(
                        factory, listener.address, listener.port,
                        ssl=tls if listener.tls == "implicit" else None,
                        # a silent client is cut after the idle timeout, TLS handshake or not
                        ssl_handshake_timeout=min(30.0, self.config.limits.idle_timeout) if listener.tls == "implicit" else None,
                        reuse_address=True,
                    )
                except OSError as exc:
                    raise OSError(exc.errno, f"listener {name}: cannot listen on "
                                             f"{listener.address}:{listener.port}: {exc.strerror}") from None
                host, port = server.sockets[0].getsockname()[:2]
                self.servers.append((listener, server))
                self.bound[name] = (host, port)
                log.info("listening on %s:%d (%s, tls=%s, require_tls=%s)", host, port, name, listener.tls,
                         listener.require_tls)
        except BaseException:
            await self._close_servers()
            raise

    def admit_connection(self, session: SessionBase) -> str | None:
        """The refusal for a new connection (shutdown, limits), or ``None`` to greet it."""
        refusal = self._admit(session)
        if self.metrics is not None:
            self.metrics[f"smtp_connections_total:{'refused' if refusal else 'accepted'}"] += 1
        return refusal

    def _admit(self, session: SessionBase) -> str | None:
        if self.draining:
            return R.SHUTTING_DOWN
        over = self.connections.acquire(session.gw.peer_ip)
        if over == "total":
            log.warning("connection from %s refused: %d connections open", session.gw.peer_ip, self.connections.total)
            return R.TOO_MANY_CONNECTIONS
        if over == "ip":
            log.warning("connection from %s refused: per-address limit %d reached", session.gw.peer_ip,
                        self.connections.max_per_ip)
            return R.TOO_MANY_CONNECTIONS_IP
        return None

    def session_closed(self) -> None:
        self._closed.set()

    def alone(self) -> bool:
        """Whether at most one SMTP session is open: nobody else waits on the event loop for a
        reply, so the spool may commit this session's enqueue on the loop's thread (issue 17)."""
        return len(self.sessions) <= 1

    async def stop(self, grace: float) -> None:
        """Drain: 421 for new and idle sessions, let transactions finish within ``grace``, then close.

        Only sessions inside a transaction are waited for. An idle session is told ``421 4.3.2``
        and closed at once; over TLS, closing waits for the client's close_notify, which a pooled
        client that is not reading never sends, so it is cut once its reply is written.
        """
        self.draining = True
        idle = [session for session in self.sessions if session.idle]
        for session in idle:
            session.shut_down()
        busy = [session for session in self.sessions if session not in idle]
        if busy:
            log.info("waiting up to %.0fs for %d session(s) inside a command or transaction", grace, len(busy))
            try:
                await asyncio.wait_for(self._until_gone(busy), grace)
            except TimeoutError:
                log.warning("shutdown grace period over: closing %d session(s)", len(self.sessions))
                for session in list(self.sessions):
                    session._end = "shutdown (grace over)"
                    session.close()
        # let connection_lost run for the sessions just closed; cut those still in a TLS shutdown
        # (the server's wait_closed would otherwise wait for them: ssl_shutdown_timeout, 30 s)
        for _ in range(3):
            if not self.sessions:
                break
            await asyncio.sleep(0)
        for session in list(self.sessions):
            session.abort()
        await self._close_servers()
        if self.store is not None:
            self.store.close()
            self.store = None

    async def _until_gone(self, sessions: list[SessionBase]) -> None:
        """Return once every one of ``sessions`` has been closed (woken by ``session_closed``)."""
        while any(session in self.sessions and not session.closing for session in sessions):
            self._closed.clear()
            await self._closed.wait()

    async def _close_servers(self) -> None:
        for _, server in self.servers:
            server.close()
        for _, server in self.servers:
            await server.wait_closed()
        self.servers = []
