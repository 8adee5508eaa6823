"""Next-hop lookup for direct delivery and ``verify``: MX in preference order, implicit MX, null MX.

The resolver is a small interface so tests (and air-gapped setups) can point a domain at
127.0.0.1 without DNS.
"""

from __future__ import annotations

import random
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver


class DnsPermanentError(Exception):
    """The domain cannot receive mail (no such domain, null MX): bounce."""

    def __init__(self, dsn: str, reply: str) -> None:
        super().__init__(reply)
        self.dsn = dsn
        self.reply = reply


class DnsTemporaryError(Exception):
    """DNS did not answer (timeout, SERVFAIL): defer."""


class Resolver(Protocol):
    async def mx_hosts(self, domain: str) -> list[str]:
        """Hosts to try, best first; raise :class:`DnsPermanentError` or :class:`DnsTemporaryError`."""
        ...


class DnsResolver:
    """dnspython's async resolver, RFC 5321 section 5.1 rules."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = timeout

    async def mx_hosts(self, domain: str) -> list[str]:
        domain = domain.rstrip(".")
        if domain.startswith("[") and domain.endswith("]"):  # address literal: user@[192.0.2.1]
            literal = domain[1:-1]
            return [literal[5:] if literal.lower().startswith("ipv6:") else literal]
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise DnsPermanentError("5.1.2", f"Host or domain name not found: {domain}") from None
        except dns.resolver.NoAnswer:
            return await self._implicit(domain)
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.YXDOMAIN) as exc:
            raise DnsTemporaryError(f"MX lookup for {domain} failed: {exc}") from None
        records = sorted(((r.preference, random.random(), r.exchange) for r in answer), key=lambda t: t[:2])
        if any(ex == dns.name.root for _, _, ex in records):
            # RFC 7505: "0 ." means the domain accepts no mail at all.
            raise DnsPermanentError("5.1.10", f"Domain {domain} does not accept mail (null MX)")
        return [ex.to_text(omit_final_dot=True) for _, _, ex in records]

    async def _implicit(self, domain: str) -> list[str]:
        """No MX: the domain's own A/AAAA is the implicit MX (RFC 5321 5.1)."""
        for rdtype in ("A", "AAAA"):
            try:
                await self._resolver.resolve(domain, rdtype)
                return [domain]
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                raise DnsTemporaryError(f"address lookup for {domain} failed: {exc}") from None
        raise DnsPermanentError("5.1.2", f"Domain {domain} has no MX, A or AAAA record")


class StaticResolver:
    """Every domain (or the listed ones) resolves to fixed hosts: tests and closed networks."""

    def __init__(self, hosts: list[str], domains: dict[str, list[str]] | None = None) -> None:
        self.hosts = hosts
        self.domains = domains or {}

    async def mx_hosts(self, domain: str) -> list[str]:
        return list(self.domains.get(domain.lower(), self.hosts))
