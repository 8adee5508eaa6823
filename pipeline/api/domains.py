"""``/api/v1/domains``: the sending domains with DKIM keys, the DNS records to publish for each, and
a live check of what DNS answers now (DKIM key, SPF, DMARC, the bounce domain's MX).

The keys are ``[plugins.dkim_sign.domains]``'s; this module reads only their public halves (the
core may not import the plugin, so it loads the PEM files itself) and never shows a private key.
The check asks the resolver the gateway delivers with (``[dns]``: nameservers, port, time-out), so
an operator sees what the gateway itself would see. A tenant's token sees the domains its
credential may send from (``allowed_sender_domains``) and nothing else (404).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pipeline.ports import ApiPrincipalView, CredentialAdmin

NO_STORE = {"Cache-Control": "no-store"}
STATUSES = ["ok", "missing", "mismatch", "unverified", "error", "not_configured"]


@dataclass(frozen=True)
class DomainKey:
    """One selector of a domain and its private key file (absolute, or relative to ``data_dir``)."""

    selector: str
    key_file: Path
    type: str = "rsa"


@dataclass
class DomainSettings:
    """What the composition root reads from the config for these handlers."""

    keys: dict[str, list[DomainKey]] = field(default_factory=dict)  # domain -> its selectors
    default_domain: str | None = None
    signing: bool = False  # dkim_sign is in [chain] plugins
    hostname: str = "localhost"
    bounce_domain: str | None = None
    data_dir: Path = Path(".")
    nameservers: Sequence[str] = ()
    port: int = 53
    timeout: float = 5.0


def domain_settings(
    plugin_config: dict[str, Any],
    *,
    signing: bool,
    hostname: str,
    bounce_domain: str | None,
    data_dir: Path,
    nameservers: Sequence[str] = (),
    port: int = 53,
    timeout: float = 5.0,
) -> DomainSettings:
    """Settings from the raw ``[plugins.dkim_sign]`` table (the plugin validates it at start-up)."""
    keys: dict[str, list[DomainKey]] = {}
    for domain, entry in (plugin_config.get("domains") or {}).items():
        if not isinstance(entry, dict) or "selector" not in entry or "key_file" not in entry:
            continue
        found = [DomainKey(str(entry["selector"]), Path(entry["key_file"]), "rsa")]
        if entry.get("ed25519_selector") and entry.get("ed25519_key_file"):
            found.append(
                DomainKey(str(entry["ed25519_selector"]), Path(entry["ed25519_key_file"]), "ed25519")
            )
        keys[str(domain).lower().rstrip(".")] = found
    default = plugin_config.get("default_domain")
    return DomainSettings(
        keys,
        str(default).lower().rstrip(".") if default else None,
        signing,
        hostname.rstrip("."),
        bounce_domain.rstrip(".") if bounce_domain else None,
        data_dir,
        list(nameservers),
        port,
        min(timeout, 10.0),
    )


def public_key_value(path: Path, key_type: str) -> tuple[str | None, str | None]:
    """``(p= value, None)`` from a private key file, or ``(None, why not)``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read the key file: {exc.strerror}"
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        elif key_type == "ed25519":
            key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip(), validate=True))
        else:
            return None, "not a PEM key"
    except (ValueError, TypeError) as exc:
        return None, f"not a private key ({exc})"
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii"), None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii"), None
    return None, "neither an RSA nor an Ed25519 key"


def _tags(record: str) -> dict[str, str]:
    """``k=v; k=v`` tag lists (DKIM, DMARC), whitespace removed from values as RFC 6376 3.2 says."""
    out: dict[str, str] = {}
    for part in record.split(";"):
        k, eq, v = part.partition("=")
        if eq:
            out[k.strip().lower()] = "".join(v.split())
    return out


def _quoted(value: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 octets (RFC 1035 3.3)."""
    return "( " + " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255)) + " )"


class DomainHandlers:
    """The domain endpoints: list, one domain's records, a live DNS check."""

    def __init__(
        self,
        settings: DomainSettings,
        credentials: CredentialAdmin,
        declared_credentials: Sequence[dict[str, Any]],
    ) -> None:
        self.s = settings
        self.credentials = credentials
        self.declared = {d["name"]: d for d in declared_credentials}

    # -- what a token may see -----------------------------------------------------------------
    async def _visible(self, principal: ApiPrincipalView) -> list[str]:
        domains = sorted(self.s.keys)
        if principal.credential is None:
            return domains
        row = self.declared.get(principal.credential)
        if row is None:
            stored = await asyncio.to_thread(self.credentials.list)
            row = next((r for r in stored if r["name"] == principal.credential), None)
        allowed = {d.lower().rstrip(".") for d in (row or {}).get("allowed_sender_domains") or []}
        return [d for d in domains if d in allowed]

    def _key(self, domain: str, key: DomainKey) -> dict[str, Any]:
        path = key.key_file if key.key_file.is_absolute() else self.s.data_dir / key.key_file
        p, problem = public_key_value(path, key.type)
        name = f"{key.selector}._domainkey.{domain}"
        value = f"v=DKIM1; k={key.type}; p={p}" if p else None
        return {"selector": key.selector, "type": key.type, "name": name, "value": value, "error": problem}

    def _entry(self, domain: str) -> dict[str, Any]:
        return {
            "domain": domain,
            "default": domain == self.s.default_domain,
            "signing": self.s.signing,
            "keys": [self._key(domain, k) for k in self.s.keys[domain]],
        }

    def _records(self, domain: str, entry: dict[str, Any]) -> list[dict[str, str]]:
        """The records to publish, in the order ``smtpgate init`` prints them."""
        host = self.s.hostname
        out = [
            {"type": "TXT", "name": k["name"], "value": k["value"], "purpose": "dkim"}
            for k in entry["keys"]
            if k["value"]
        ]
        out.append({"type": "TXT", "name": domain, "value": f"v=spf1 a:{host} ~all", "purpose": "spf"})
        out.append(
            {
                "type": "TXT",
                "name": f"_dmarc.{domain}",
                "value": f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}",
                "purpose": "dmarc",
            }
        )
        if self.s.bounce_domain:
            out.append(
                {"type": "MX", "name": self.s.bounce_domain, "value": f"10 {host}.", "purpose": "bounce_mx"}
            )
        return out

    # -- handlers ---------------------------------------------------------------------------------
    async def list(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        if request.query:
            return web.json_response(
                {"error": "this endpoint takes no parameters"}, status=400, headers=NO_STORE
            )
        domains = await self._visible(principal)
        rows = await asyncio.to_thread(lambda: [self._entry(d) for d in domains])
        return web.json_response({"domains": rows}, headers=NO_STORE)

    async def _one(self, request: web.Request, principal: ApiPrincipalView) -> str | None:
        domain = request.match_info["domain"].lower().rstrip(".")
        return domain if domain in await self._visible(principal) else None

    async def show(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        domain = await self._one(request, principal)
        if domain is None:
            return web.json_response({"error": "no such domain"}, status=404, headers=NO_STORE)
        entry = await asyncio.to_thread(self._entry, domain)
        records = self._records(domain, entry)
        zone = [
            f"{r['name']}. IN {r['type']} " + (_quoted(r["value"]) if r["type"] == "TXT" else r["value"])
            for r in records
        ]
        return web.json_response({**entry, "records": records, "zone": zone}, headers=NO_STORE)

    async def check(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        domain = await self._one(request, principal)
        if domain is None:
            return web.json_response({"error": "no such domain"}, status=404, headers=NO_STORE)
        entry = await asyncio.to_thread(self._entry, domain)
        checker = DnsChecker(self.s)
        dkim, spf, dmarc, mx = await asyncio.gather(
            asyncio.gather(*(checker.dkim(k) for k in entry["keys"])),
            checker.spf(domain),
            checker.dmarc(domain),
            checker.bounce_mx(),
        )
        checks = {"dkim": list(dkim), "spf": spf, "dmarc": dmarc, "bounce_mx": mx}
        ok = all(c["status"] == "ok" for c in dkim) and all(
            c["status"] in ("ok", "not_configured") for c in (spf, dmarc, mx)
        )
        return web.json_response({"domain": domain, "ok": ok, "checks": checks}, headers=NO_STORE)


class DnsChecker:
    """Look-ups with dnspython on the gateway's resolver settings; each check says what it found."""

    def __init__(self, s: DomainSettings) -> None:
        self.s = s
        self.r = dns.asyncresolver.Resolver(configure=not s.nameservers)
        if s.nameservers:
            self.r.nameservers = list(s.nameservers)
        self.r.port = s.port
        self.r.lifetime = s.timeout

    async def _txt(self, name: str) -> list[str]:
        try:
            answer = await self.r.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer]

    @staticmethod
    def _failed(name: str, exc: Exception) -> dict[str, Any]:
        return {
            "name": name,
            "status": "error",
            "found": [],
            "detail": f"DNS did not answer: {type(exc).__name__}",
        }

    async def dkim(self, key: dict[str, Any]) -> dict[str, Any]:
        name = key["name"]
        base = {"selector": key["selector"], "name": name, "expected": key["value"]}
        try:
            found = await self._txt(name)
        except dns.exception.DNSException as exc:
            return {**base, **self._failed(name, exc)}
        records = [r for r in found if _tags(r).get("v", "DKIM1") == "DKIM1" and "p" in _tags(r)]
        if not records:
            return {**base, "status": "missing", "found": found, "detail": "no DKIM key record"}
        want = (key["value"] and _tags(key["value"]).get("p")) or None
        if want is not None and any(_tags(r).get("p") == want for r in records):
            return {**base, "status": "ok", "found": records, "detail": "the published key is this gateway's"}
        return {
            **base,
            "status": "mismatch",
            "found": records,
            "detail": "a key is published but it is not this gateway's (signatures will fail)",
        }

    async def spf(self, domain: str) -> dict[str, Any]:
        try:
            found = [r for r in await self._txt(domain) if r.lower().split(" ", 1)[0] == "v=spf1"]
        except dns.exception.DNSException as exc:
            return self._failed(domain, exc)
        base = {"name": domain, "found": found}
        if not found:
            return {**base, "status": "missing", "detail": "no v=spf1 record"}
        if len(found) > 1:
            return {
                **base,
                "status": "mismatch",
                "detail": "more than one v=spf1 record (a permanent error, RFC 7208)",
            }
        terms = [t.lower() for t in found[0].split()[1:]]
        host = self.s.hostname.lower()
        if any(t.lstrip("+") in (f"a:{host}", f"mx:{host}") for t in terms):
            return {**base, "status": "ok", "detail": f"authorises {host}"}
        addresses = await self._addresses(host)
        for t in terms:
            mech, _, net = t.lstrip("+").partition(":")
            if mech in ("ip4", "ip6") and net:
                try:
                    network = ipaddress.ip_network(net, strict=False)
                except ValueError:
                    continue
                if any(a.version == network.version and a in network for a in addresses):
                    return {**base, "status": "ok", "detail": f"authorises {host}'s address by {t}"}
        if any(t.lstrip("+?~").startswith(("include:", "redirect=")) for t in terms):
            return {**base, "status": "unverified", "detail": "delegates to include/redirect (not followed)"}
        return {**base, "status": "mismatch", "detail": f"{host} is not authorised by this record"}

    async def _addresses(self, host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for rdtype in ("A", "AAAA"):
            try:
                out += [ipaddress.ip_address(rr.to_text()) for rr in await self.r.resolve(host, rdtype)]
            except dns.exception.DNSException:
                continue
        return out

    async def dmarc(self, domain: str) -> dict[str, Any]:
        name = f"_dmarc.{domain}"
        try:
            found = [r for r in await self._txt(name) if _tags(r).get("v") == "DMARC1"]
        except dns.exception.DNSException as exc:
            return self._failed(name, exc)
        base = {"name": name, "found": found}
        if not found:
            return {**base, "status": "missing", "detail": "no v=DMARC1 record"}
        if len(found) > 1:
            return {
                **base,
                "status": "mismatch",
                "detail": "more than one DMARC record (receivers ignore both)",
            }
        policy = _tags(found[0]).get("p")
        if policy not in ("none", "quarantine", "reject"):
            return {**base, "status": "mismatch", "detail": "no valid p= policy"}
        return {**base, "status": "ok", "detail": f"policy {policy}"}

    async def bounce_mx(self) -> dict[str, Any]:
        name = self.s.bounce_domain
        if not name:
            return {
                "name": None,
                "status": "not_configured",
                "found": [],
                "detail": "no [tracking] bounce_domain",
            }
        try:
            answer = await self.r.resolve(name, "MX")
            found = sorted((rr.preference, rr.exchange.to_text(omit_final_dot=True).lower()) for rr in answer)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            found = []
        except dns.exception.DNSException as exc:
            return self._failed(name, exc)
        shown = [f"{p} {h}" for p, h in found]
        if not found:
            return {"name": name, "status": "missing", "found": shown, "detail": "no MX record"}
        if any(h == self.s.hostname.lower() for _, h in found):
            return {
                "name": name,
                "status": "ok",
                "found": shown,
                "detail": f"mail for it reaches {self.s.hostname}",
            }
        return {
            "name": name,
            "status": "mismatch",
            "found": shown,
            "detail": f"its MX is not {self.s.hostname}: bounces will not come back here",
        }


def _err(text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(text: str, schema: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_DOMAIN = {"name": "domain", "in": "path", "required": True, "schema": {"type": "string"}}
_NULLABLE_STR = {"type": ["string", "null"]}
_COMMON = {"401": _err("No valid bearer token."), "429": _err("Too many failed tokens; see Retry-After.")}
_CHECK = {
    "type": "object",
    "required": ["name", "status", "found", "detail"],
    "properties": {
        "name": _NULLABLE_STR,
        "status": {"type": "string", "enum": STATUSES},
        "found": {"type": "array", "items": {"type": "string"}},
        "detail": {"type": "string"},
        "selector": {"type": "string"},
        "expected": _NULLABLE_STR,
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/domains": {
        "get": {
            "operationId": "listDomains",
            "summary": "Sending domains with DKIM keys (a tenant: those its credential may send from).",
            "responses": {
                "200": _ok("Domains", "DomainList"),
                "400": _err("A parameter was given."),
                **_COMMON,
            },
        }
    },
    "/api/v1/domains/{domain}": {
        "get": {
            "operationId": "getDomain",
            "summary": "One domain's keys and the DNS records to publish (DKIM, SPF, DMARC, the bounce domain's MX).",
            "parameters": [_DOMAIN],
            "responses": {
                "200": _ok("The domain and its records", "DomainRecords"),
                "404": _err("No such domain (or not this token's)."),
                **_COMMON,
            },
        }
    },
    "/api/v1/domains/{domain}/check": {
        "get": {
            "operationId": "checkDomain",
            "summary": "What DNS answers now, through the gateway's resolver: DKIM, SPF, DMARC, bounce MX.",
            "parameters": [_DOMAIN],
            "responses": {
                "200": _ok("Each check's status", "DomainCheck"),
                "404": _err("No such domain (or not this token's)."),
                **_COMMON,
            },
        }
    },
}

_DOMAIN_PROPS: dict[str, Any] = {
    "domain": {"type": "string"},
    "default": {"type": "boolean"},
    "signing": {"type": "boolean"},
    "keys": {
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "type", "name", "value", "error"],
            "properties": {
                "selector": {"type": "string"},
                "type": {"type": "string", "enum": ["rsa", "ed25519"]},
                "name": {"type": "string"},
                "value": _NULLABLE_STR,
                "error": _NULLABLE_STR,
            },
        },
    },
}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "Domain": {
        "type": "object",
        "additionalProperties": False,
        "required": ["domain", "default", "signing", "keys"],
        "properties": _DOMAIN_PROPS,
    },
    "DomainList": {
        "type": "object",
        "required": ["domains"],
        "additionalProperties": False,
        "properties": {"domains": {"type": "array", "items": {"$ref": "#/components/schemas/Domain"}}},
    },
    "DomainRecords": {
        "type": "object",
        "additionalProperties": False,
        "required": ["domain", "default", "signing", "keys", "records", "zone"],
        "properties": {
            **_DOMAIN_PROPS,
            "records": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "name", "value", "purpose"],
                    "properties": {
                        "type": {"type": "string", "enum": ["TXT", "MX"]},
                        "name": {"type": "string"},
                        "value": {"type": "string"},
                        "purpose": {"type": "string", "enum": ["dkim", "spf", "dmarc", "bounce_mx"]},
                    },
                },
            },
            "zone": {"type": "array", "items": {"type": "string"}},
        },
    },
    "DomainCheck": {
        "type": "object",
        "additionalProperties": False,
        "required": ["domain", "ok", "checks"],
        "properties": {
            "domain": {"type": "string"},
            "ok": {"type": "boolean"},
            "checks": {
                "type": "object",
                "additionalProperties": False,
                "required": ["dkim", "spf", "dmarc", "bounce_mx"],
                "properties": {
                    "dkim": {"type": "array", "items": _CHECK},
                    "spf": _CHECK,
                    "dmarc": _CHECK,
                    "bounce_mx": _CHECK,
                },
            },
        },
    },
}
