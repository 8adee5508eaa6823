"""The milter server: listeners in Postfix's socket syntax (``inet:HOST:PORT``, ``unix:PATH``),
one :class:`~pipeline.milter.session.MilterSession` per MTA connection.

Bad input never takes the server down: a packet longer than ``max_packet``, one that breaks the
protocol, an MTA silent for ``idle_timeout`` or one that disappears mid-message ends that
connection only, with one log line saying why (the MTA then applies its ``milter_default_action``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from pipeline.chain.runner import Chain
from pipeline.config import Config, MilterEndpoint
from pipeline.milter import protocol as P
from pipeline.milter.message import Delivery, FailPolicy
from pipeline.milter.session import Credentials, MilterSession, RefusalNotes

log = logging.getLogger("smtpgate.milter")


class MilterServer:
    """Listens on endpoints and serves milter connections until :meth:`stop`."""

    def __init__(
        self,
        chain: Chain,
        config: Config,
        credentials: Credentials,
        policy: FailPolicy,
        *,
        max_packet: int,
        idle_timeout: float,
        end_of_message: Callable[[Delivery], Awaitable[list[bytes]]] | None = None,
        refusals: RefusalNotes | None = None,
    ) -> None:
        self.end_of_message = end_of_message
        self.refusals = refusals
        self.chain = chain
        self.config = config
        self.credentials = credentials
        self.policy = policy
        self.max_packet = max_packet
        self.idle_timeout = idle_timeout
        self.servers: list[asyncio.Server] = []
        self.bound: list[MilterEndpoint] = []
        self.connections: set[asyncio.Task[None]] = set()
        self._unix_paths: list[Path] = []

    async def start(self, endpoints: list[MilterEndpoint]) -> None:
        try:
            for ep in endpoints:
                await self._listen(ep)
        except BaseException:
            await self.stop(0)
            raise

    async def _listen(self, ep: MilterEndpoint) -> None:
        try:
            if ep.kind == "unix":
                path = Path(ep.path)
                if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
                    path.unlink()  # a stale socket from a previous run
                server = await asyncio.start_unix_server(self._serve, ep.path)
                self._unix_paths.append(path)
                # the MTA (Postfix runs as "postfix") connects through its group, never "other"
                os.chmod(ep.path, 0o660)
                bound = ep
            else:
                server = await asyncio.start_server(self._serve, ep.host, ep.port, reuse_address=True)
                host, port = server.sockets[0].getsockname()[:2]
                bound = MilterEndpoint("inet", host=host, port=port)
        except OSError as exc:
            raise OSError(exc.errno, f"milter: cannot listen on {ep}: {exc.strerror}") from None
        self.servers.append(server)
        self.bound.append(bound)
        log.info("milter listening on %s", bound)

    async def stop(self, grace: float) -> None:
        """Stop listening; connections get ``grace`` seconds to finish, then are cut."""
        for server in self.servers:
            server.close()
        if self.connections and grace > 0:
            await asyncio.wait(set(self.connections), timeout=grace)
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.gather(*self.connections, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()
        self.servers = []
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                path.unlink()
        self._unix_paths = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        peer = writer.get_extra_info("peername")
        label = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        session = MilterSession(
            self.chain, self.config, self.credentials, self.policy, label, self.end_of_message, self.refusals
        )
        end = "quit"
        try:
            while not session.closed:
                try:
                    header = await asyncio.wait_for(reader.readexactly(4), self.idle_timeout)
                    length = P.packet_length(header, self.max_packet)
                    raw = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial or session.in_body:
                        end = f"lost mid-{'message' if session.in_body else 'packet'}"
                        log.warning(
                            "milter peer=%s disconnected mid-%s: %d byte(s) of message discarded",
                            label,
                            "message" if session.in_body else "packet",
                            session.size,
                        )
                    else:
                        end = "closed"
                    break
                except TimeoutError:
                    end = "idle timeout"
                    log.warning("milter peer=%s silent for %.0f s: closing", label, self.idle_timeout)
                    break
                packet = P.Packet(raw[:1], raw[1:])
                try:
                    replies = await session.handle(packet)
                except Exception as exc:
                    end = "protocol error" if isinstance(exc, P.ProtocolError) else "internal error"
                    if isinstance(exc, P.ProtocolError):
                        log.error("milter peer=%s protocol error in %s: %s: closing", label, packet.name, exc)
                    else:  # our bug: this connection ends, tempfailing what it was doing; the server goes on
                        log.exception(
                            "milter peer=%s internal error in %s: %s: closing", label, packet.name, exc
                        )
                    if packet.command in (P.CONNECT, P.HELO, P.MAIL, P.RCPT, P.EOB):
                        writer.write(P.TEMPFAIL)  # the MTA is waiting for a reply: a clear one
                    break
                if replies:
                    writer.write(b"".join(replies))
                    await writer.drain()
        except P.ProtocolError as exc:
            end = "protocol error"
            log.error("milter peer=%s %s: closing", label, exc)
        except (ConnectionError, OSError) as exc:
            end = f"connection error ({type(exc).__name__})"
            log.warning("milter peer=%s connection error: %s", label, exc)
        finally:
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.debug("milter peer=%s connection ended: %s", label, end)
