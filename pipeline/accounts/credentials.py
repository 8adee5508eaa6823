"""Credentials: hashed secrets, the SQLite credential store, and authentication.

Two sources, one lookup: ``[[credentials]]`` in the config file and ``<data_dir>/credentials.db``
(managed by ``smtpgate credentials``). Secrets are only ever stored as salted scrypt hashes
(``scrypt$n$r$p$salt$hash``; ``pbkdf2_sha256$iterations$salt$hash`` is also read). Comparing is
constant-time. scrypt is deliberately slow (tens of ms), so a successful verification is
remembered in memory under an HMAC of (stored hash, secret) with a per-process random key: 50
clients that reconnect every message pay scrypt once, and no plain secret is ever kept.

Generated API keys look like ``sg_<key id>_<secret>``; the key id finds the row, so a wrong key
costs one hash, not one per credential.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.config import Config, ConfigError, CredentialSection, format_validation_error
from pipeline.contract.context import Credential
from pipeline.storage.sqlite import open_sqlite

log = logging.getLogger("smtpgate.ingress.auth")

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_CACHE_SIZE = 10_000
_CACHE_TTL = 3600.0
API_KEY_PREFIX = "sg_"

SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    username    TEXT,
    key_id      TEXT UNIQUE,
    secret_hash TEXT,
    options     TEXT NOT NULL DEFAULT '{}',
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL
);
"""


class CredentialError(ValueError):
    """A credential that cannot be stored (bad name, duplicate, bad option)."""


# -- hashing ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """A salted scrypt hash of ``secret`` in the ``scrypt$n$r$p$salt$hash`` format."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def hash_secret_pbkdf2(secret: str, iterations: int = 600_000) -> str:
    """A salted PBKDF2-HMAC-SHA256 hash (``pbkdf2_sha256$iterations$salt$hash``), for FIPS setups."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations, 32)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def check_hash_format(stored: str) -> None:
    """Raise ``ValueError`` when ``stored`` is not a hash this module can verify."""
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if n < 2 or n & (n - 1) or r < 1 or p < 1:
                raise ValueError
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            if int(parts[1]) < 1:
                raise ValueError
        else:
            raise ValueError
        _unb64(parts[-2])
        _unb64(parts[-1])
    except (ValueError, IndexError, base64.binascii.Error):  # type: ignore[attr-defined]
        raise ValueError(
            "secret_hash must look like scrypt$N$r$p$salt$hash (see `smtpgate credentials hash`)"
        ) from None


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches ``stored`` (constant-time compare; slow by design)."""
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt":
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            expected = _unb64(parts[5])
            digest = hashlib.scrypt(
                secret.encode("utf-8"), salt=_unb64(parts[4]), n=n, r=r, p=p, dklen=len(expected),
                maxmem=256 * 1024 * 1024,
            )
        elif parts[0] == "pbkdf2_sha256":
            expected = _unb64(parts[3])
            digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), _unb64(parts[2]), int(parts[1]), len(expected))
        else:
            return False
    except (ValueError, IndexError):
        return False
    return hmac.compare_digest(digest, expected)


def new_api_key() -> tuple[str, str]:
    """``(key_id, api_key)`` for a new generated key."""
    key_id = secrets.token_hex(4)
    return key_id, f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def new_password() -> str:
    return secrets.token_urlsafe(18)


# -- records ---------------------------------------------------------------------------------

_OPTION_FIELDS = (
    "features", "locked", "sandbox", "allowed_sender_domains", "max_message_size", "max_recipients",
    "messages_per_minute", "egress", "webhooks",
)


@dataclass(frozen=True)
class Record:
    """One credential from either source, with what authentication needs."""

    section: CredentialSection
    source: str  # "config" or "store"
    secret_hash: str | None
    key_id: str | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def name(self) -> str:
        return self.section.name

    @property
    def disabled(self) -> bool:
        return self.section.disabled

    def credential(self) -> Credential:
        return self.section.to_credential()


def _networks(section: CredentialSection, where: str) -> tuple[Any, ...]:
    out = []
    for net in section.networks:
        try:
            out.append(ipaddress.ip_network(net, strict=False))
        except ValueError:
            raise ConfigError(f"{where}.networks: {net!r} is not an IP network (CIDR)") from None
    if section.kind == "ip" and not out:
        raise ConfigError(f"{where}.networks: an ip credential needs at least one network")
    return tuple(out)


def config_records(config: Config) -> list[Record]:
    """The ``[[credentials]]`` of the config file, validated, with plain secrets hashed."""
    out: list[Record] = []
    names: set[str] = set()
    for i, section in enumerate(config.credentials):
        where = f"{config.source}: credentials[{i}]"
        if section.name in names:
            raise ConfigError(f"{where}.name: two credentials are named {section.name!r}")
        names.add(section.name)
        secret_hash = section.secret_hash
        if secret_hash is not None:
            try:
                check_hash_format(secret_hash)
            except ValueError as exc:
                raise ConfigError(f"{where}.secret_hash: {exc}") from None
        elif section.secret is not None:
            secret_hash = hash_secret(section.secret)
        if section.kind in ("apikey", "password") and not secret_hash:
            raise ConfigError(f"{where}: a {section.kind} credential needs secret or secret_hash")
        if section.kind == "password" and not section.username:
            raise ConfigError(f"{where}.username: a password credential needs a username")
        out.append(Record(section, "config", secret_hash, networks=_networks(section, where)))
    return out


# -- the store -------------------------------------------------------------------------------


class CredentialStore:
    """``<data_dir>/credentials.db``: add, list, disable, remove (the CLI) and lookups (the server)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_sqlite(path)
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._version: int | None = None
        self._rows: list[Record] = []

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(
        self,
        name: str,
        kind: str,
        *,
        username: str | None = None,
        secret: str | None = None,
        networks: Iterable[str] = (),
        options: dict[str, Any] | None = None,
    ) -> str | None:
        """Store a credential; returns the generated secret (API key or password) if one was made."""
        generated: str | None = None
        key_id: str | None = None
        data = {"name": name, "kind": kind, "username": username, "networks": list(networks), **(options or {})}
        try:
            section = CredentialSection.model_validate(data)
        except ValidationError as exc:
            raise CredentialError(format_validation_error("credential", exc)) from None
        if not name or len(name) > 100 or not name.isprintable():
            raise CredentialError("credential names are 1-100 printable characters")
        try:
            _networks(section, "credential")
        except ConfigError as exc:
            raise CredentialError(str(exc)) from None
        if kind == "apikey":
            if secret is None:
                key_id, generated = new_api_key()
                secret = generated
        elif kind == "password":
            if not username:
                raise CredentialError("a password credential needs --username")
            if secret is None:
                generated = secret = new_password()
        secret_hash = hash_secret(secret) if secret is not None else None
        opts = {k: getattr(section, k) for k in _OPTION_FIELDS}
        with self._lock:
            if username and kind == "password":
                clash = self._conn.execute(
                    "SELECT name FROM credentials WHERE kind = 'password' AND lower(username) = lower(?)", (username,)
                ).fetchone()
                if clash:
                    raise CredentialError(f"username {username!r} is already used by credential {clash[0]!r}")
            try:
                self._conn.execute(
                    "INSERT INTO credentials (name, kind, username, key_id, secret_hash, options, disabled, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (name, kind, username, key_id, secret_hash,
                     json.dumps({**opts, "networks": list(section.networks)}), time.time()),
                )
                self._version = None
            except Exception as exc:
                if "UNIQUE" in str(exc):
                    raise CredentialError(f"a credential named {name!r} already exists") from None
                raise
        return generated

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        with self._lock:
            cur = self._conn.execute("UPDATE credentials SET disabled = ? WHERE name = ?", (int(disabled), name))
            self._version = None  # data_version only moves for other connections' commits
        if cur.rowcount == 0:
            raise CredentialError(f"no credential named {name!r}")

    def remove(self, name: str) -> None:
        with self._lock:
            cur = self._conn.execute("DELETE FROM credentials WHERE name = ?", (name,))
            self._version = None
        if cur.rowcount == 0:
            raise CredentialError(f"no credential named {name!r}")

    def list(self) -> list[dict[str, Any]]:
        """Every stored credential without its secret hash (for ``credentials list``)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, kind, username, key_id, options, disabled, created_at FROM credentials ORDER BY name"
            ).fetchall()
        out = []
        for name, kind, username, key_id, options, disabled, created_at in rows:
            out.append({
                "name": name, "kind": kind, "username": username, "key_id": key_id,
                "disabled": bool(disabled), "created_at": created_at, **json.loads(options),
            })
        return out

    def records(self) -> builtins.list[Record]:  # builtins: this class has a method named list
        """All stored credentials; re-read only when another connection changed the file."""
        with self._lock:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return self._rows
            rows = self._conn.execute(
                "SELECT name, kind, username, key_id, secret_hash, options, disabled FROM credentials"
            ).fetchall()
            self._version = version
        out = []
        for name, kind, username, key_id, secret_hash, options, disabled in rows:
            try:
                section = CredentialSection.model_validate(
                    {"name": name, "kind": kind, "username": username, "disabled": bool(disabled), **json.loads(options)}
                )
                out.append(Record(section, "store", secret_hash, key_id, _networks(section, name)))
            except (ValidationError, ConfigError, ValueError) as exc:
                log.error("credentials.db: skipping unreadable credential %r: %s", name, exc)
        self._rows = out
        return out


# -- authentication ----------------------------------------------------------------------------


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
        store_names = {r.name for r in store.records()} if store else set()
        for rec in self._config_records:
            if rec.name in store_names:
                log.warning("credential %r is in both the config file and credentials.db; the config wins", rec.name)

    def records(self) -> list[Record]:
        seen = {r.name for r in self._config_records}
        stored = [r for r in self.store.records() if r.name not in seen] if self.store else []
        return self._config_records + stored

    # -- IP allow-list
    def match_ip(self, ip: str) -> Credential | None:
        """The enabled ``ip`` credential whose networks contain ``ip`` (most specific first)."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        best: tuple[int, Record] | None = None
        for rec in self.records():
            if rec.section.kind != "ip" or rec.disabled:
                continue
            for net in rec.networks:
                if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
                    best = (net.prefixlen, rec)
        return best[1].credential() if best else None

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
            named = [r for r in recs if r.section.kind == "password" and (r.section.username or "").lower() == login.lower()]
            if named:
                return named
        if password.startswith(API_KEY_PREFIX):
            key_id = password[len(API_KEY_PREFIX):].partition("_")[0]
            by_id = [r for r in recs if r.key_id == key_id and r.section.kind == "apikey"]
            if by_id:
                return by_id
        return [r for r in recs if r.section.kind == "apikey" and r.key_id is None]

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
