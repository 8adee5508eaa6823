"""MTA-STS (RFC 8461): discover a domain's policy through its ``_mta-sts`` TXT record, fetch it
from ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` over verified HTTPS, and cache it.

Caching follows postfix-mta-sts-resolver: a policy (or "this domain has none") is kept in memory
and re-validated against the TXT ``id`` only after ``mta_sts_recheck`` seconds, so a cached
look-up costs a dictionary read; an unchanged ``id`` extends the check without a fetch; a fetched
policy is kept until its ``max_age`` (also in ``<data_dir>/egress.db``, so a restart is no
downgrade window) and used when DNS or HTTPS fail (RFC 8461 section 5.1).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from pipeline.config import TlsPolicySection
from pipeline.egress.resolver import DnsTemporaryError, PolicyResolver
from pipeline.egress.state import EgressState
from pipeline.egress.tlspolicy import client_context

log = logging.getLogger("smtpgate.egress")

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3: senders may limit the body size
MAX_AGE = 31_557_600  # RFC 8461 3.2: at most one year
MAX_CACHED = 100_000  # domains kept in memory (with or without a policy)
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(Exception):
    """The policy could not be fetched or is not valid; the message says which."""


@dataclass(frozen=True)
class StsPolicy:
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    policy_id: str = ""

    def mx_matches(self, host: str) -> bool:
        """RFC 8461 4.1: exact, or ``*.example.com`` matching exactly one more leftmost label."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, _, rest = host.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "mx": list(self.mx), "max_age": self.max_age}


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the one ``v=STSv1`` TXT record, else ``None`` (none, or ambiguous)."""
    sts = [r for r in records if r.replace(" ", "").startswith("v=STSv1;") or r.strip() == "v=STSv1"]
    if len(sts) != 1:
        return None
    fields = dict(
        part.strip().split("=", 1) for part in sts[0].split(";") if "=" in part
    )
    policy_id = fields.get("id", "").strip()
    return policy_id if _ID.match(policy_id) else None


def parse_policy(text: str, policy_id: str = "") -> StsPolicy:
    """The policy body (``key: value`` lines); :class:`PolicyError` naming the bad field."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"line without 'key: value': {line[:80]!r}")
        fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError(f"version is {fields.get('version')!r}, not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode {mode!r} is not enforce, testing or none")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("max_age is missing or not a number") from None
    if not 0 <= max_age <= MAX_AGE:
        raise PolicyError(f"max_age {max_age} is out of range")
    mx = tuple(m.lower().rstrip(".") for m in fields.get("mx", []))
    if mode != "none" and not mx:
        raise PolicyError("no mx line")
    return StsPolicy(mode, mx, max_age, policy_id)


class DnsOverResolver(AbstractResolver):
    """aiohttp asks our resolver (so ``[dns] nameservers`` covers the HTTPS fetch too)."""

    def __init__(self, resolver: PolicyResolver) -> None:
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        try:
            addresses = await self.resolver.addresses(host)
        except DnsTemporaryError as exc:
            raise OSError(str(exc)) from None
        if not addresses:
            raise OSError(f"{host} has no address")
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                          proto=0, flags=socket.AI_NUMERICHOST)
            for a in addresses
        ]

    async def close(self) -> None:
        return None


@dataclass
class _Entry:
    policy: StsPolicy | None
    checked_at: float
    expires_at: float  # of the policy (0 for "no policy")


class MtaSts:
    """Policy look-ups with caching; one per process."""

    def __init__(
        self,
        settings: TlsPolicySection,
        resolver: PolicyResolver,
        state: EgressState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.state = state
        self.clock = clock
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[StsPolicy | None]] = {}
        self.fetches = 0
        if state is not None:
            for domain, pid, data, _fetched, expires in state.load_policies(clock()):
                policy = StsPolicy(data["mode"], tuple(data["mx"]), int(data["max_age"]), pid)
                self._cache[domain] = _Entry(policy, 0.0, expires)

    async def policy(self, domain: str) -> StsPolicy | None:
        """The domain's policy in force (``None``: none, or mode ``none``)."""
        domain = domain.lower().rstrip(".")
        now = self.clock()
        entry = self._cache.get(domain)
        if entry is not None and now - entry.checked_at < self.settings.mta_sts_recheck and (
            entry.policy is None or now < entry.expires_at
        ):
            policy = entry.policy
        else:
            running = self._inflight.get(domain)
            if running is not None:
                policy = await asyncio.shield(running)
            else:
                fut: asyncio.Future[StsPolicy | None] = asyncio.get_running_loop().create_future()
                self._inflight[domain] = fut
                try:
                    policy = await self._refresh(domain, entry, now)
                    fut.set_result(policy)
                except BaseException as exc:
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                    raise
                finally:
                    del self._inflight[domain]
        return policy if policy is not None and policy.mode != "none" else None

    async def _refresh(self, domain: str, entry: _Entry | None, now: float) -> StsPolicy | None:
        valid = entry.policy if entry is not None and entry.policy is not None and now < entry.expires_at else None
        try:
            policy_id = parse_txt(await self.resolver.txt(f"_mta-sts.{domain}"))
        except DnsTemporaryError as exc:
            log.info("MTA-STS discovery for %s failed (%s); %s", domain, exc, "cached policy kept" if valid else "none")
            return valid
        if policy_id is None:
            # No record: a policy we hold stays valid until max_age (RFC 8461 3.2, 5.1).
            self._cache[domain] = _Entry(valid, now, entry.expires_at if valid and entry else 0.0)
            return valid
        if valid is not None and valid.policy_id == policy_id:
            assert entry is not None
            entry.checked_at = now
            return valid
        try:
            policy = await self.fetch(domain, policy_id)
        except PolicyError as exc:
            log.warning("MTA-STS policy of %s could not be fetched: %s%s", domain, exc,
                        "; the cached one stays in force" if valid else "")
            if valid is not None:
                return valid
            self._cache[domain] = _Entry(None, now, 0.0)
            return None
        expires = now + policy.max_age
        self._cache[domain] = _Entry(policy, now, expires)
        if len(self._cache) > MAX_CACHED:  # oldest first (dicts keep insertion order)
            self._cache.pop(next(iter(self._cache)))
        if self.state is not None:
            try:
                self.state.save_policy(domain, policy_id, policy.to_json(), now, expires)
            except Exception:
                log.exception("saving the MTA-STS policy of %s failed", domain)
        return policy

    async def fetch(self, domain: str, policy_id: str = "") -> StsPolicy:
        """GET the policy over HTTPS with certificate verification, no redirects (RFC 8461 3.3)."""
        self.fetches += 1
        s = self.settings
        host = f"mta-sts.{domain}"
        port = "" if s.mta_sts_port == 443 else f":{s.mta_sts_port}"
        url = f"https://{host}{port}/.well-known/mta-sts.txt"
        ctx = client_context(True, str(s.ca_file) if s.ca_file else None)
        timeout = aiohttp.ClientTimeout(total=s.mta_sts_timeout)
        connector = aiohttp.TCPConnector(ssl=ctx, resolver=DnsOverResolver(self.resolver), use_dns_cache=False)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise PolicyError(f"{url} answered HTTP {resp.status}")
                    if resp.content_type != "text/plain":
                        raise PolicyError(f"{url} is {resp.content_type}, not text/plain")
                    body = await resp.content.read(MAX_POLICY_BYTES + 1)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise PolicyError(f"{url}: certificate did not verify: {exc.certificate_error}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PolicyError(f"{url}: {type(exc).__name__}: {exc}") from None
        if len(body) > MAX_POLICY_BYTES:
            raise PolicyError(f"{url} is larger than {MAX_POLICY_BYTES} bytes")
        return parse_policy(body.decode("utf-8", "replace"), policy_id)
