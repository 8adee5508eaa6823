"""Next-hop lookup for direct delivery and ``verify``: MX in preference order, implicit MX, null MX;
plus the look-ups TLS policy needs (addresses of an MX, the ``_mta-sts`` TXT record, TLSA records
with the resolver's DNSSEC verdict).

The resolver is a small interface so tests (and air-gapped setups) can point a domain at
127.0.0.1 without DNS; ``[dns] nameservers`` points it at a chosen (e.g. validating) resolver.
"""

from __future__ import annotations

import random
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.inet
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


class PolicyResolver(Resolver, Protocol):
    """What direct delivery with TLS policy needs on top of MX look-ups."""

    async def addresses(self, host: str) -> list[str]: ...

    async def txt(self, name: str) -> list[str]: ...

    async def tlsa(self, name: str) -> tuple[list[tuple[int, int, int, bytes]], bool]: ...


class DnsResolver:
    """dnspython's async resolver, RFC 5321 section 5.1 rules.

    ``nameservers``/``port``: ask these servers instead of ``/etc/resolv.conf``'s. ``validating``:
    the operator vouches that they validate DNSSEC, so their AD bit is believed (DANE, RFC 7672
    section 1.3: only a trusted validating resolver's AD bit may be used).
    """

    def __init__(
        self, timeout: float = 10.0, nameservers: list[str] | None = None, port: int = 53, validating: bool = False
    ) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = port
        self._resolver.lifetime = timeout
        self.validating = validating
        if validating:
            # Ask for the AD bit (RFC 6840 5.7) with EDNS DO, so the validating resolver reports it.
            self._resolver.use_edns(0, dns.flags.DO, 1232)
            self._resolver.flags = dns.flags.RD | dns.flags.AD

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


    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of an MX host (an address literal is its own answer)."""
        if dns.inet.is_address(host):
            return [host]
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [r.to_text() for r in await self._resolver.resolve(host, rdtype)]
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                if not found:
                    raise DnsTemporaryError(f"address lookup for {host} failed: {exc}") from None
        return found

    async def txt(self, name: str) -> list[str]:
        """The TXT strings at ``name`` (each record's strings joined); ``[]`` when there is none."""
        try:
            answer = await self._resolver.resolve(name, "TXT")
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTemporaryError(f"TXT lookup for {name} failed: {exc}") from None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def tlsa(self, name: str) -> tuple[list[tuple[int, int, int, bytes]], bool]:
        """(usage, selector, mtype, data) records at ``name`` and whether the answer is DNSSEC-secure.

        Secure means: this resolver is configured as validating and set the AD bit. Anything else
        is "insecure" and RFC 7672 says to ignore the records.
        """
        try:
            answer = await self._resolver.resolve(name, "TLSA")
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return [], False
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTemporaryError(f"TLSA lookup for {name} failed: {exc}") from None
        secure = self.validating and bool(answer.response.flags & dns.flags.AD)
        return [(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer], secure


class StaticResolver:
    """Every domain (or the listed ones) resolves to fixed hosts: tests and closed networks."""

    def __init__(self, hosts: list[str], domains: dict[str, list[str]] | None = None) -> None:
        self.hosts = hosts
        self.domains = domains or {}

    async def mx_hosts(self, domain: str) -> list[str]:
        return list(self.domains.get(domain.lower(), self.hosts))

    async def addresses(self, host: str) -> list[str]:
        return [host]

    async def txt(self, name: str) -> list[str]:
        return []

    async def tlsa(self, name: str) -> tuple[list[tuple[int, int, int, bytes]], bool]:
        return [], False
