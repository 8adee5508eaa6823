"""Authentication: an SMTP AUTH login/password (or API key) and a client address checked against
the credentials of both sources.

scrypt is deliberately slow (tens of ms), so a successful verification is remembered in memory
under an HMAC of (stored hash, secret) with a per-process random key: 50 clients that reconnect
every message pay scrypt once, and no plain secret is ever kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from pipeline.accounts.secrets import API_KEY_PREFIX, verify_secret
from pipeline.accounts.store import CredentialStore, Record, config_records
from pipeline.config import Config
from pipeline.contract.context import Credential
from pipeline.contract.vocabulary import CredentialKind

log = logging.getLogger("smtpgate.ingress.auth")

_CACHE_SIZE = 10_000
_CACHE_TTL = 3600.0


@dataclass(frozen=True)
class AuthOutcome:
    """The result of one AUTH attempt: ``credential`` on success, else ``reason`` (never the secret)."""

    credential: Credential | None
    reason: str  # "ok", "invalid", "disabled"
    name: str | None = None


class Authenticator:
    """Looks up and verifies credentials from the config file and the store."""

    def __init__(self, config: Config, store: CredentialStore | None) -> None:
        self.store = store
        self._config_records = config_records(config)
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._config_names = frozenset(r.name for r in self._config_records)
        # derived from the store's rows, rebuilt when the store hands out a new list (it re-read them)
        self._stored: list[Record] | None = None
        self._records: list[Record] = self._config_records
        self._by_ip: dict[str, Record | None] = {}
        store_names = {r.name for r in store.records()} if store else set()
        for rec in self._config_records:
            if rec.name in store_names:
                log.warning("credential %r is in both the config file and credentials.db; the config wins", rec.name)

    def records(self) -> list[Record]:
        """The config file's credentials, then the store's that the config does not override (do not
        modify the list: it is kept until the store's rows change)."""
        if self.store is None:
            return self._records
        stored = self.store.records()  # the same list object as long as nothing changed (its cache)
        if stored is not self._stored:
            self._records = self._config_records + [r for r in stored if r.name not in self._config_names]
            self._by_ip = {}
            self._stored = stored
        return self._records

    # -- IP allow-list
    def match_ip(self, ip: str) -> Credential | None:
        """The enabled ``ip`` credential whose networks contain ``ip`` (most specific first).

        Asked at every connection: the answer per address is remembered until the credentials
        change (:meth:`records` still asks the store first, so a change is seen at once).
        """
        records = self.records()
        try:
            rec = self._by_ip[ip]
        except KeyError:
            if len(self._by_ip) >= _CACHE_SIZE:  # many distinct clients: start again rather than grow
                self._by_ip.clear()
            rec = self._by_ip[ip] = self._match_ip(ip, records)
        return rec.credential() if rec is not None else None

    @staticmethod
    def _match_ip(ip: str, records: list[Record]) -> Record | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        best: tuple[int, Record] | None = None
        for rec in records:
            if rec.section.kind != CredentialKind.IP or rec.disabled:
                continue
            for net in rec.networks:
                if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
                    best = (net.prefixlen, rec)
        return best[1] if best else None

    # -- secrets
    def _cache_id(self, stored: str, secret: str) -> bytes:
        return hmac.new(self._cache_key, stored.encode() + b"\0" + secret.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    async def _verify(self, secret: str, stored: str) -> bool:
        key = self._cache_id(stored, secret)
        expiry = self._verified.get(key)
        now = time.monotonic()
        if expiry is not None and expiry > now:
            self._verified.move_to_end(key)
            return True
        ok = await asyncio.to_thread(verify_secret, secret, stored)
        if ok:
            self._verified[key] = now + _CACHE_TTL
            while len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        return ok

    def _candidates(self, login: str, password: str) -> list[Record]:
        recs = self.records()
        if login and login.lower() != "apikey":
            named = [r for r in recs if r.section.kind == CredentialKind.PASSWORD and (r.section.username or "").lower() == login.lower()]
            if named:
                return named
        if password.startswith(API_KEY_PREFIX):
            key_id = password[len(API_KEY_PREFIX):].partition("_")[0]
            by_id = [r for r in recs if r.key_id == key_id and r.section.kind == CredentialKind.APIKEY]
            if by_id:
                return by_id
        return [r for r in recs if r.section.kind == CredentialKind.APIKEY and r.key_id is None]

    async def authenticate(self, login: str, password: str) -> AuthOutcome:
        """Verify a login/password pair: a password credential by username, else an API key."""
        if not password:
            return AuthOutcome(None, "invalid")
        for rec in self._candidates(login, password):
            if rec.secret_hash and await self._verify(password, rec.secret_hash):
                if rec.disabled:
                    return AuthOutcome(None, "disabled", rec.name)
                return AuthOutcome(rec.credential(), "ok", rec.name)
        return AuthOutcome(None, "invalid")
