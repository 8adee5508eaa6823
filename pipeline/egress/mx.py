"""Direct delivery: look up each recipient domain's MX and talk to it, shaped per destination, from
the copy's source pool, with the TLS its policy requires (pipeline/egress/policy.py).

Per copy: MX hosts (null MX bounces, DNS trouble defers) -> source address (pool, daily cap) ->
site and path (suspended or over its rate: postponed, no attempt used) -> TLS policy (MTA-STS
``enforce`` keeps only the MX hosts it lists) -> hosts in preference order, each of their
addresses, until one takes the copy or refuses it. A throttling reply suspends the path.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import Config, EgressSection, ShapingSection, TlsPolicySection
from pipeline.egress.base import Copy, DeliveryResult
from pipeline.egress.connections import MxConnection, open_mx
from pipeline.egress.policy import DomainTls, TlsPolicies
from pipeline.egress.pools import Source, SourcePools
from pipeline.egress.resolver import (
    DnsPermanentError,
    DnsResolver,
    DnsTemporaryError,
    PolicyResolver,
    Resolver,
)
from pipeline.egress.shaping import Path, Shaper
from pipeline.egress.smtp import ConnectFailed, send_on, sharing_wires
from pipeline.egress.state import EgressState
from pipeline.egress.tlspolicy import LEVEL_RANK, Requirement, TlsPolicyFailed
from pipeline.egress.tlsrpt import TlsReports
from pipeline.ports import Metrics

log = logging.getLogger("smtpgate.egress")


@dataclass
class MxShared:
    """What every ``mx`` egress of one process shares: sites and their limits, TLS policies, pools."""

    shaper: Shaper
    policies: TlsPolicies
    pools: SourcePools
    metrics: Metrics
    reports: TlsReports = dataclasses.field(default_factory=lambda: TlsReports(None))

    async def close(self) -> None:
        await self.shaper.close()


def build_mx_shared(
    config: Config,
    resolver: PolicyResolver,
    metrics: Metrics | None = None,
    state: EgressState | None = None,
) -> MxShared:
    metrics = metrics if metrics is not None else collections.Counter()
    e = config.egress
    shaper = Shaper(config.shaping, e.connections_per_hop, state, metrics)
    policies = TlsPolicies(config.tls_policy, e.tls, resolver, state)
    pools = SourcePools(config, e.helo_name or config.gateway.hostname, state)
    return MxShared(shaper, policies, pools, metrics, TlsReports(state))


def dns_resolver(config: Config, timeout: float) -> DnsResolver:
    d = config.dns
    return DnsResolver(timeout=min(timeout, d.timeout), nameservers=d.nameservers or None, port=d.port,
                       validating=d.validating)


class MxEgress:
    """Hosts tried in preference order; a host that cannot be reached passes to the next one."""

    def __init__(
        self,
        settings: EgressSection,
        helo: str,
        resolver: Resolver | None = None,
        name: str = "mx",
        shared: MxShared | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.helo = settings.helo_name or helo
        self.resolver: PolicyResolver = resolver or DnsResolver(timeout=settings.timeout)  # type: ignore[assignment]
        self.port = settings.mx_port
        if shared is None:  # standalone (tests, tools): default shaping and policies, no persistence
            metrics: collections.Counter[str] = collections.Counter()
            config = Config(egress=settings)
            config.gateway.hostname = self.helo
            shared = MxShared(
                Shaper(ShapingSection(), settings.connections_per_hop, None, metrics),
                TlsPolicies(TlsPolicySection(), settings.tls, self.resolver),
                SourcePools(config, self.helo),
                metrics,
            )
            self._owns_shared = True
        else:
            self._owns_shared = False
        self.shared = shared
        self.ca_file = str(shared.policies.settings.ca_file or settings.ca_file or "") or None

    async def deliver(self, copies: Sequence[Copy]) -> list[DeliveryResult]:
        return await sharing_wires(copies, self._one)

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
        shaper, metrics = self.shared.shaper, self.shared.metrics
        source, capped_until = self.shared.pools.choose(copy.pool)
        if source is None:
            reason = f"every address of pool {copy.pool} has sent its daily cap"
            return DeliveryResult.postpone(copy.recipient, capped_until, reason)
        if not source.address and source.helo == self.shared.pools.helo:
            source = dataclasses.replace(source, helo=self.helo)
        rule = shaper.site_for(domain, hosts)
        path = shaper.path(rule, source.address)
        now = shaper.clock()
        held = shaper.held_until(path, now)
        if held is not None:
            metrics[f"egress_postponed_total:{shaper.label(rule)}"] += 1
            return DeliveryResult.postpone(copy.recipient, held[0], held[1])
        shaper.record_send(path, now)
        shaper.begin(path)
        try:
            result = await self._over_hosts(copy, domain, hosts, path, source)
        finally:
            shaper.end(path)
        if source.address and result.relay != "none":
            if result.status != "deferred":  # the receiver took the transaction: it counts toward the cap
                self.shared.pools.count(source)
            result = dataclasses.replace(result, source=source.address)
        return result

    async def _over_hosts(self, copy: Copy, domain: str, hosts: list[str], path: Path, source: Source) -> DeliveryResult:
        dt = await self.shared.policies.for_domain(domain)
        allowed = [h for h in hosts if dt.allowed(h)]
        if not allowed:
            reply = f"no MX host of {domain} ({', '.join(hosts)}) is listed in its MTA-STS policy (enforce)"
            log.warning("%s", reply)
            self.shared.metrics["egress_tls_failures_total:mta-sts-mx"] += 1
            for host in hosts:
                self._report(domain, dt, Requirement("verify", "mta-sts"), host, "MTA-STS policy: MX not listed")
            return DeliveryResult.deferred(copy.recipient, "4.7.5", reply)
        if dt.sts is not None and dt.sts.mode == "testing":
            for host in (h for h in hosts if not dt.sts.mx_matches(h)):
                log.warning("MTA-STS testing for %s: %s is not listed in the policy; delivering anyway", domain, host)
                self.shared.metrics["egress_tls_failures_total:mta-sts-testing"] += 1
                self._report(domain, dt, Requirement("verify", "mta-sts"), host, "MTA-STS policy: MX not listed")
        last: ConnectFailed | None = None
        for host in allowed:
            try:
                req = raised(await self.shared.policies.for_host(dt, host, self.port), copy.require_tls)
                addresses = await self.resolver.addresses(host)
            except (TlsPolicyFailed, DnsTemporaryError) as exc:
                last = ConnectFailed("4.7.5" if isinstance(exc, TlsPolicyFailed) else "4.4.3", str(exc), f"{host}:{self.port}")
                if isinstance(exc, TlsPolicyFailed):
                    self._report(domain, dt, Requirement("dane", "dane"), host, str(exc))
                continue
            for address in addresses:
                try:
                    return await self._send(copy, host, address, req, path, source, dt)
                except ConnectFailed as exc:
                    last = exc
                    if exc.dsn in ("4.7.4", "4.7.5"):
                        self._report(domain, dt, req, host, exc.reply)
                    if self._throttled(path, exc.reply):
                        return DeliveryResult(copy.recipient, "deferred", exc.dsn, exc.reply, exc.relay,
                                              retry_at=path.suspended_until)
        if last is None:
            return DeliveryResult.deferred(copy.recipient, "4.4.3", f"no mail exchanger for {domain}")
        if last.dsn in ("4.7.4", "4.7.5"):
            self.shared.metrics[f"egress_tls_failures_total:{dt.source}"] += 1
        return DeliveryResult.deferred(copy.recipient, last.dsn, last.reply, last.relay)

    async def _send(
        self, copy: Copy, host: str, address: str, req: Requirement, path: Path, source: Source, dt: DomainTls
    ) -> DeliveryResult:
        shaper = self.shared.shaper
        label = shaper.label(path.rule)

        def accept(conn: MxConnection) -> bool:
            return conn.host == host and conn.requirement.key == req.key

        async def open_new() -> MxConnection:
            conn = await open_mx(host, address, self.port, helo=source.helo, source=source.address or None,
                                 timeout=self.settings.timeout, req=req, ca_file=self.ca_file)
            self.shared.metrics[f"egress_connections_total:{label}"] += 1
            self._report(domain_of(copy), dt, req, host, "; ".join(conn.tls.problems) or None)
            if conn.tls.problems:
                log.warning("MTA-STS testing for %s: %s would have been refused: %s", domain_of(copy),
                            conn.relay, "; ".join(conn.tls.problems))
                self.shared.metrics["egress_tls_failures_total:mta-sts-testing"] += 1
            return conn

        conn = await path.pool.acquire(accept, open_new)
        if path.suspended_until > shaper.clock():
            # Suspended while this copy waited for a connection: it is not sent, and keeps its attempt.
            path.pool.release(conn, True)
            return DeliveryResult.postpone(copy.recipient, path.suspended_until,
                                           f"destination {path.rule.name} suspended: {path.reason}")
        reusable = False
        try:
            result, reusable = await send_on(conn.smtp, copy, conn.relay)
        finally:
            path.pool.release(conn, reusable)
        result = dataclasses.replace(result, tls=conn.tls.outcome)
        self.shared.metrics[f"egress_tls_total:{_tls_class(conn)}"] += 1
        if result.status == "deferred" and self._throttled(path, result.reply, result.dsn):
            result = dataclasses.replace(result, retry_at=path.suspended_until)
        return result

    def _report(self, domain: str, dt: DomainTls, req: Requirement, host: str, failure: str | None) -> None:
        """Count a session under MTA-STS or DANE for TLS-RPT (pipeline/egress/tlsrpt.py)."""
        if req.source == "dane":
            policy = [f"{u} {s} {m} {data.hex()}" for u, s, m, data in req.tlsa]
            self.shared.reports.record(domain, "tlsa", policy, host, failure)
        elif req.source == "mta-sts" and dt.sts is not None:
            sts = dt.sts
            policy = ["version: STSv1", f"mode: {sts.mode}", *(f"mx: {m}" for m in sts.mx), f"max_age: {sts.max_age}"]
            self.shared.reports.record(domain, "sts", policy, host, failure)

    def _throttled(self, path: Path, reply: str, dsn: str | None = None) -> bool:
        """Suspend the path when ``reply`` is a throttling reply; returns whether it was."""
        code = int(reply[:3]) if reply[:3].isdigit() else 0
        if dsn is None:
            dsn = reply[4:].split(" ", 1)[0] if code else ""
        if not self.shared.shaper.is_throttle(path.rule, code, dsn, reply):
            return False
        self.shared.shaper.suspend(path, reply)
        return True

    async def close(self) -> None:
        if self._owns_shared:
            await self.shared.close()


def raised(req: Requirement, require: str | None) -> Requirement:
    """``req`` raised to the message's own TLS demand (``encrypt``/``verify``), never lowered.

    A higher demand replaces the destination's level (source ``message``, so the outcome says why);
    MTA-STS ``testing`` only reports, so a message demanding ``verify`` makes it enforced.
    """
    if require is None:
        return req
    if LEVEL_RANK[require] > LEVEL_RANK[req.level] or (req.report_only and LEVEL_RANK[require] >= LEVEL_RANK[req.level]):
        return Requirement(require, "message")
    return req


def domain_of(copy: Copy) -> str:
    return copy.recipient.rpartition("@")[2]


def _tls_class(conn: MxConnection) -> str:
    """Bounded label for ``egress_tls_total``."""
    t = conn.tls
    if t.problems:
        return "testing-failed"
    if t.version is None:
        return "none"
    return f"verified-{t.source}" if t.verified else "unverified"
