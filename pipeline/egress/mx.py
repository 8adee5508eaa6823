"""Direct delivery: look up each recipient domain's MX and talk to it, opportunistic STARTTLS."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pipeline.config import EgressSection
from pipeline.egress.base import Copy, DeliveryResult
from pipeline.egress.resolver import DnsPermanentError, DnsResolver, DnsTemporaryError, Resolver
from pipeline.egress.smtp import ConnectFailed, HopPool, open_connection, send_copy


class MxEgress:
    """Hosts tried in preference order; a host that cannot be reached passes to the next one."""

    def __init__(self, settings: EgressSection, helo: str, resolver: Resolver | None = None, name: str = "mx") -> None:
        self.name = name
        self.settings = settings
        self.helo = settings.helo_name or helo
        self.resolver: Resolver = resolver or DnsResolver(timeout=settings.timeout)
        self.port = settings.mx_port
        self._pools: dict[str, HopPool] = {}

    def _pool(self, host: str) -> HopPool:
        pool = self._pools.get(host)
        if pool is None:
            s = self.settings
            tls = "opportunistic" if s.tls in ("starttls", "opportunistic") else s.tls

            async def factory() -> object:
                return await open_connection(
                    host,
                    self.port,
                    helo=self.helo,
                    timeout=s.timeout,
                    tls=tls,
                    verify=s.verify_certificates,
                    ca_file=str(s.ca_file) if s.ca_file else None,
                )

            pool = self._pools[host] = HopPool(host, self.port, s.connections_per_hop, factory)  # type: ignore[arg-type]
        return pool

    async def deliver(self, copies: Sequence[Copy]) -> list[DeliveryResult]:
        return list(await asyncio.gather(*(self._one(c) for c in copies)))

    async def _one(self, copy: Copy) -> DeliveryResult:
        domain = copy.recipient.rpartition("@")[2]
        if not domain:
            return DeliveryResult.bounced(copy.recipient, "5.1.3", "recipient address has no domain")
        try:
            hosts = await self.resolver.mx_hosts(domain)
        except DnsPermanentError as exc:
            return DeliveryResult.bounced(copy.recipient, exc.dsn, exc.reply)
        except DnsTemporaryError as exc:
            return DeliveryResult.deferred(copy.recipient, "4.4.3", str(exc))
        last: ConnectFailed | None = None
        for host in hosts:
            try:
                return await send_copy(self._pool(host), copy)
            except ConnectFailed as exc:
                last = exc
        if last is None:
            return DeliveryResult.deferred(copy.recipient, "4.4.3", f"no mail exchanger for {domain}")
        return DeliveryResult.deferred(copy.recipient, last.dsn, last.reply, last.relay)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
