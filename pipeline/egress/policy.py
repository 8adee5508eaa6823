"""Which TLS a destination gets: the config table first, then DANE for an MX host with
DNSSEC-validated TLSA records (RFC 8461 section 2: DANE takes precedence over MTA-STS), then the
domain's MTA-STS policy, else the default (opportunistic, as before).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import TlsPolicySection
from pipeline.egress.mtasts import MtaSts, StsPolicy
from pipeline.egress.resolver import DnsTemporaryError, PolicyResolver
from pipeline.egress.state import EgressState
from pipeline.egress.tlspolicy import (
    TLSA,
    Requirement,
    TlsPolicyFailed,
    configured_level,
    default_level,
    usable_tlsa,
)

log = logging.getLogger("smtpgate.egress")

TLSA_CACHE_SECONDS = 300.0


@dataclass(frozen=True)
class DomainTls:
    """A recipient domain's TLS policy: the configured or default level, or its MTA-STS policy."""

    level: str
    source: str  # default | policy | mta-sts
    sts: StsPolicy | None = None

    def allowed(self, host: str) -> bool:
        """MTA-STS ``enforce``: only MX hosts the policy lists (``testing`` reports, never refuses)."""
        return self.sts is None or self.sts.mode != "enforce" or self.sts.mx_matches(host)


class TlsPolicies:
    def __init__(
        self,
        settings: TlsPolicySection,
        egress_tls: str,
        resolver: PolicyResolver,
        state: EgressState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.egress_tls = egress_tls
        self.resolver = resolver
        self.clock = clock
        self.mta_sts = MtaSts(settings, resolver, state, clock) if settings.mta_sts else None
        self.dane = settings.dane and bool(getattr(resolver, "validating", False))
        self._tlsa: dict[str, tuple[float, tuple[TLSA, ...] | None]] = {}

    async def for_domain(self, domain: str) -> DomainTls:
        configured = configured_level(self.settings, domain, self.egress_tls)
        if configured is not None:
            return DomainTls(configured[0], configured[1])
        if self.mta_sts is not None:
            sts = await self.mta_sts.policy(domain)
            if sts is not None:
                level = "verify" if sts.mode == "enforce" else "may"
                return DomainTls(level, "mta-sts", sts)
        return DomainTls(default_level(self.settings, self.egress_tls), "default")

    async def for_host(self, dt: DomainTls, host: str, port: int) -> Requirement:
        """The requirement for one MX host of a domain with policy ``dt``."""
        if dt.source != "policy" and self.dane and dt.level != "none":
            records = await self._tlsa_for(host, port)
            if records is not None:
                if records:
                    return Requirement("dane", "dane", records)
                # TLSA present but none usable: mandatory unauthenticated TLS (RFC 7672 2.2).
                return Requirement("encrypt", "dane")
        if dt.sts is not None and dt.sts.mode == "testing":
            return Requirement("verify", "mta-sts", report_only=True)
        return Requirement(dt.level, dt.source)

    async def _tlsa_for(self, host: str, port: int) -> tuple[TLSA, ...] | None:
        """Usable DNSSEC-secure TLSA records of ``_port._tcp.host``; ``None``: DANE does not apply."""
        name = f"_{port}._tcp.{host.rstrip('.')}"
        now = self.clock()
        cached = self._tlsa.get(name)
        if cached is not None and now - cached[0] < TLSA_CACHE_SECONDS:
            return cached[1]
        try:
            records, secure = await self.resolver.tlsa(name)
        except DnsTemporaryError as exc:
            # RFC 7672 2.2: a failed TLSA lookup may hide a downgrade; the host is not used (deferred).
            raise TlsPolicyFailed(f"TLSA lookup for {name} failed: {exc}") from None
        result = usable_tlsa(records) if records and secure else None
        if records and not secure:
            log.info("TLSA records of %s are not DNSSEC-validated; DANE does not apply", name)
        self._tlsa[name] = (now, result)
        if len(self._tlsa) > 10_000:
            self._tlsa.pop(next(iter(self._tlsa)))
        return result
