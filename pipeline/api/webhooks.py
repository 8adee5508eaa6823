"""``/api/v1/webhooks``: where events are POSTed; add and remove endpoints, filter them by event
type, send a signed test event, and read an endpoint's recent delivery attempts.

Endpoints come from two places. The config file's (``[webhooks] urls``, ``[[webhooks.endpoints]]``
with their vendor format, a credential's ``webhooks``) and ``smtpgate credentials add --webhook``'s
are listed with ``id`` ``null``: they change where they were made. Endpoints added here are stored
(:mod:`pipeline.accounts.webhook_endpoints`, both backends), get an id, use smtpgate's signed JSON
format, and the event recorder picks them up at the next event. A tenant's token adds, lists,
tests and removes its own credential's endpoints only (anything else is 404, as everywhere in the
API); an administrator's adds global ones (every event) or names a credential.

A receiver URL must be ``http(s)://host...`` without user info: the URL is shown in listings and
in the sender's log lines, so a password in it would leak (use a secret path or the signature).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args
from urllib.parse import urlsplit

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver
from aiohttp import web

from pipeline.config import WebhookEventType
from pipeline.events.webhooks import USER_AGENT, sign_webhook
from pipeline.ports import ApiPrincipalView, CredentialAdmin, MessageLog

log = logging.getLogger("smtpgate.api")

NO_STORE = {"Cache-Control": "no-store"}
EVENT_TYPES = get_args(WebhookEventType)
MAX_URL = 2000
TEST_TIMEOUT = 10.0


class WebhookEndpointAdmin(Protocol):
    """The stored endpoints (:class:`pipeline.accounts.webhook_endpoints.WebhookEndpointStore`)."""

    def add(
        self, url: str, credential: str | None, events: list[str], created_by: str | None = None
    ) -> dict[str, Any]: ...

    def remove(self, endpoint_id: str) -> bool: ...

    def set_events(self, endpoint_id: str, events: list[str]) -> dict[str, Any] | None: ...

    def get(self, endpoint_id: str) -> dict[str, Any] | None: ...

    def list(self) -> list[dict[str, Any]]: ...


@dataclass
class WebhookSettings:
    """What the composition root hands these handlers besides the store: the config file's endpoints
    (``url``, ``credential``, ``events``, ``format``), the signing secret, the POST time-out."""

    declared: Sequence[dict[str, Any]] = field(default_factory=list)
    secret: bytes = b""
    timeout: float = TEST_TIMEOUT
    tenant_private: bool = False  # [api] tenant_webhook_private
    nameservers: Sequence[str] = ()  # [dns]: how a tenant URL's host name is resolved for that check
    dns_port: int = 53
    dns_timeout: float = 5.0
    # pending deliveries to a removed endpoint's URL (of a credential's events; None: all) are dropped
    cancel_pending: Callable[[str, str | None], int] | None = None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=NO_STORE)


def _view(row: dict[str, Any], source: str) -> dict[str, Any]:
    return {
        "id": row.get("id"),
        "url": row["url"],
        "credential": row.get("credential"),
        "events": list(row.get("events") or []),
        "format": row.get("format", "smtpgate"),
        "source": source,
    }


def valid_url(value: Any) -> str | None:
    """An ``http(s)`` URL with a host, no user info, no fragment, printable; else ``None``."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_URL
        or not value.isprintable()
        or " " in value
    ):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        return None
    if parts.password is not None or parts.fragment or (port is not None and port == 0):
        return None
    return value


def _events(value: Any) -> list[str] | None:
    """A valid event-type filter, or ``None``."""
    if not isinstance(value, list) or not all(isinstance(e, str) and e in EVENT_TYPES for e in value):
        return None
    return list(value)


async def non_global_address(url: str, settings: WebhookSettings) -> str | None:
    """Why ``url``'s host is not a public address (loopback, private, link-local, ...), or ``None``.

    An IP literal is judged as it is; ``localhost`` names are local; any other name is resolved
    (A and AAAA, through ``[dns]``) and every address must be global. A name that does not resolve
    is refused too: the gateway could not deliver to it either.
    """
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this machine"
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            resolver.nameservers = list(settings.nameservers)
        resolver.port, resolver.lifetime = settings.dns_port, settings.dns_timeout
        addresses = []
        for rdtype in ("A", "AAAA"):
            try:
                addresses += [ipaddress.ip_address(r.to_text()) for r in await resolver.resolve(host, rdtype)]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException:
                return f"{host} could not be resolved"
        if not addresses:
            return f"{host} has no address"
    for address in addresses:
        if not address.is_global:
            return f"{host} is a non-public address ({address})"
    return None


class WebhookHandlers:
    """The webhook endpoints on the store, the credential store (for credentials' own URLs) and the log."""

    def __init__(
        self,
        store: WebhookEndpointAdmin,
        credentials: CredentialAdmin,
        log: MessageLog,
        declared_credentials: Sequence[dict[str, Any]],
        global_urls: Sequence[str],
        settings: WebhookSettings,
    ) -> None:
        self.store = store
        self.credentials = credentials
        self.log = log
        self.declared_credentials = {d["name"]: d for d in declared_credentials}
        self.global_urls = list(global_urls)
        self.settings = settings
        self.formatted = {d["url"] for d in settings.declared if d.get("format", "smtpgate") != "smtpgate"}

    async def _all(self) -> list[dict[str, Any]]:
        """Every endpoint: the config file's, credentials' own, then those added over the API."""
        rows = [_view({"url": u}, "config") for u in self.global_urls]
        rows += [_view(d, "config") for d in self.settings.declared]
        rows += [
            _view({"url": u, "credential": name}, "config")
            for name, d in self.declared_credentials.items()
            for u in d.get("webhooks") or []
        ]
        stored = await asyncio.to_thread(self.credentials.list)
        rows += [
            _view({"url": u, "credential": r["name"]}, "credential")
            for r in stored
            if r["name"] not in self.declared_credentials
            for u in r.get("webhooks") or []
        ]
        rows += [_view(r, "api") for r in await asyncio.to_thread(self.store.list)]
        return rows

    async def _endpoint(self, request: web.Request, principal: ApiPrincipalView) -> dict[str, Any] | None:
        """The stored endpoint named in the path if this token may see it (else ``None``: a 404)."""
        row = await asyncio.to_thread(self.store.get, request.match_info["id"])
        if row is None or (principal.credential is not None and row["credential"] != principal.credential):
            return None
        return row

    async def list(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        if request.query:
            return _error(400, "this endpoint takes no parameters")
        rows = await self._all()
        if principal.credential is not None:
            rows = [r for r in rows if r["credential"] == principal.credential]
        return web.json_response({"endpoints": rows}, headers=NO_STORE)

    async def add(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, 'the body must be JSON: {"url": ..., "events": [...]}')
        if not isinstance(body, dict) or set(body) - {"url", "events", "credential"}:
            return _error(400, "expected an object with url, optional events and credential")
        url = valid_url(body.get("url"))
        if url is None:
            return _error(
                400,
                "url must be an http(s) URL with a host and without user:password@ "
                f"(at most {MAX_URL} characters)",
            )
        events = _events(body.get("events", []))
        if events is None:
            return _error(400, f"events must be a list of: {', '.join(EVENT_TYPES)} (empty: every event)")
        credential = body.get("credential")
        if credential is not None and (
            not isinstance(credential, str)
            or not credential
            or len(credential) > 100
            or not credential.isprintable()
        ):
            return _error(400, "credential must be a credential name")
        if principal.credential is not None:
            if credential not in (None, principal.credential):
                return _error(404, "no such credential")
            credential = principal.credential
        if url in self.formatted:
            return _error(409, f"{url} is a config endpoint with its own payload format")
        if principal.credential is not None and not self.settings.tenant_private:
            why = await non_global_address(url, self.settings)
            if why is not None:
                return _error(400, f"{why}: a tenant's webhook must be on a public address")
        try:
            row = await asyncio.to_thread(self.store.add, url, credential, events, principal.name)
        except ValueError as exc:
            return _error(409, str(exc))
        # the signing secret, shown once: this endpoint's deliveries are signed with it
        return web.json_response({**_view(row, "api"), "secret": row["secret"]}, status=201, headers=NO_STORE)

    async def change(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """Change the event-type filter of an endpoint added over the API."""
        row = await self._endpoint(request, principal)
        if row is None:
            return _error(404, "no such webhook endpoint (config endpoints change in the config file)")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, 'the body must be JSON: {"events": [...]}')
        if not isinstance(body, dict) or set(body) != {"events"}:
            return _error(
                400, "expected an object with events (the URL and scope do not change: add another)"
            )
        events = _events(body["events"])
        if events is None:
            return _error(400, f"events must be a list of: {', '.join(EVENT_TYPES)} (empty: every event)")
        changed = await asyncio.to_thread(self.store.set_events, row["id"], events)
        if changed is None:
            return _error(404, "no such webhook endpoint")
        return web.json_response(_view(changed, "api"), headers=NO_STORE)

    async def remove(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """Remove an endpoint; its pending deliveries are dropped unless the URL is still wanted by
        another endpoint (the config file's, a credential's own, or another one added here)."""
        row = await self._endpoint(request, principal)
        if row is None or not await asyncio.to_thread(self.store.remove, row["id"]):
            return _error(404, "no such webhook endpoint (config endpoints change in the config file)")
        still_wanted = any(e["url"] == row["url"] for e in await self._all())
        if self.settings.cancel_pending is not None and not still_wanted:
            dropped = await asyncio.to_thread(self.settings.cancel_pending, row["url"], row["credential"])
            log.info(
                "webhook endpoint %s removed by API token %r; %d pending deliveries dropped",
                row["id"],
                principal.name,
                dropped,
            )
        return web.Response(status=204, headers=NO_STORE)

    async def deliveries(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """The endpoint's latest attempts (newest first); a tenant's own events only."""
        row = await self._endpoint(request, principal)
        if row is None:
            return _error(404, "no such webhook endpoint")
        q = request.query
        if set(q) - {"limit"}:
            return _error(400, "unknown parameter (known: limit)")
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            return _error(400, "limit must be an integer")
        if not 1 <= limit <= 200:
            return _error(400, "limit must be between 1 and 200")
        rows = await asyncio.to_thread(self.log.webhook_deliveries, row["credential"], limit, row["url"])
        return web.json_response({"deliveries": rows}, headers=NO_STORE)

    async def test(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """POST a signed ``test`` event to the endpoint now, and say what the receiver answered. It is
        not an event: nothing is stored, counted or retried."""
        row = await self._endpoint(request, principal)
        if row is None:
            return _error(404, "no such webhook endpoint")
        if principal.credential is not None and not self.settings.tenant_private:
            why = await non_global_address(row["url"], self.settings)  # the name may point elsewhere now
            if why is not None:
                return _error(409, f"{why}: not sent (a tenant's webhook must be on a public address)")
        now = time.time()
        payload = {
            "id": 0,
            "event": "test",
            "time": now,
            "queue_id": None,
            "recipient": None,
            "credential": row["credential"],
            "campaign_id": None,
            "letter_id": None,
            "gate": {"uniq": None},
            "machine": False,
            "data": {"test": True, "endpoint": row["id"]},
            "tags": [],
            "metadata": {},
        }
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        ts = str(int(now))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Smtpgate-Event": "test",
            "X-Smtpgate-Event-Id": "0",
            "X-Smtpgate-Timestamp": ts,
            "X-Smtpgate-Signature": sign_webhook(row["secret"].encode() or self.settings.secret, ts, body),
        }
        started = time.monotonic()
        status: int | None = None
        problem: str | None = None
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(row["url"], data=body, headers=headers, allow_redirects=False) as resp,
            ):
                await resp.read()
                status = resp.status
                if not 200 <= status < 300:
                    problem = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"[:300]
        ms = round((time.monotonic() - started) * 1000, 1)
        return web.json_response(
            {
                "id": row["id"],
                "url": row["url"],
                "delivered": problem is None,
                "status": status,
                "error": problem,
                "ms": ms,
            },
            headers=NO_STORE,
        )


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


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_NULLABLE_STR = {"type": ["string", "null"]}
_COMMON = {"401": _err("No valid bearer token."), "429": _err("Too many failed tokens; see Retry-After.")}

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/webhooks": {
        "get": {
            "operationId": "listWebhooks",
            "summary": "Where events are POSTed: the config file's endpoints (id null) and those added here "
            "(a tenant: its own credential's).",
            "responses": {
                "200": _ok("Endpoints", "WebhookEndpoints"),
                "400": _err("A parameter was given."),
                **_COMMON,
            },
        },
        "post": {
            "operationId": "addWebhook",
            "summary": "Add an endpoint (smtpgate's signed JSON) for the token's credential, or (an "
            "administrator) for `credential` or every event; `events` filters by type.",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookAdd"}}},
            },
            "responses": {
                "201": _ok("Added, with its signing secret (shown once)", "WebhookEndpointWithSecret"),
                "400": _err("Not JSON, a bad URL or event type; a tenant's URL on a non-public address."),
                "404": _err("Not this token's credential."),
                "409": _err("Already an endpoint of this scope, or a config endpoint with a format."),
                "413": _err("Body over 64 KiB."),
                **_COMMON,
            },
        },
    },
    "/api/v1/webhooks/{id}": {
        "patch": {
            "operationId": "changeWebhook",
            "summary": "Change the event-type filter of an endpoint added over the API (empty: every event).",
            "parameters": [_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookChange"}}},
            },
            "responses": {
                "200": _ok("Changed", "WebhookEndpoint"),
                "400": _err("Not JSON, or not a list of event types."),
                "404": _err("No such endpoint (or not this token's)."),
                "413": _err("Body over 64 KiB."),
                **_COMMON,
            },
        },
        "delete": {
            "operationId": "removeWebhook",
            "summary": "Remove an endpoint added over the API.",
            "parameters": [_ID],
            "responses": {
                "204": {"description": "Removed"},
                "404": _err("No such endpoint (or not this token's)."),
                **_COMMON,
            },
        },
    },
    "/api/v1/webhooks/{id}/test": {
        "post": {
            "operationId": "testWebhook",
            "summary": "POST a signed `test` event to the endpoint now; the receiver's answer.",
            "parameters": [_ID],
            "responses": {
                "200": _ok("What the receiver answered", "WebhookTest"),
                "404": _err("No such endpoint (or not this token's)."),
                "409": _err("A tenant's endpoint whose host is now a non-public address: not sent."),
                **_COMMON,
            },
        }
    },
    "/api/v1/webhooks/{id}/deliveries": {
        "get": {
            "operationId": "listWebhookEndpointDeliveries",
            "summary": "The endpoint's latest delivery attempts, newest first.",
            "parameters": [
                _ID,
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                },
            ],
            "responses": {
                "200": _ok("Deliveries", "WebhookDeliveries"),
                "400": _err("Bad parameter."),
                "404": _err("No such endpoint (or not this token's)."),
                **_COMMON,
            },
        }
    },
}

_ENDPOINT_PROPS: dict[str, Any] = {
    "id": _NULLABLE_STR,
    "url": {"type": "string"},
    "credential": _NULLABLE_STR,
    "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
    "format": {"type": "string", "enum": ["smtpgate", "sendgrid", "mailgun", "postmark"]},
    "source": {
        "type": "string",
        "enum": ["config", "credential", "api"],
        "description": "config: the config file; credential: `smtpgate credentials "
        "add --webhook`; api: added here (only these have an id).",
    },
}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "WebhookEndpoint": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "url", "credential", "events", "format", "source"],
        "properties": _ENDPOINT_PROPS,
    },
    "WebhookEndpointWithSecret": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "url", "credential", "events", "format", "source", "secret"],
        "properties": {
            **_ENDPOINT_PROPS,
            "secret": {
                "type": "string",
                "description": "HMAC key of X-Smtpgate-Signature for this endpoint's deliveries; shown only here.",
            },
        },
    },
    "WebhookEndpoints": {
        "type": "object",
        "required": ["endpoints"],
        "additionalProperties": False,
        "properties": {
            "endpoints": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookEndpoint"}}
        },
    },
    "WebhookAdd": {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "format": "uri", "pattern": "^https?://[^/@ ]+", "maxLength": MAX_URL},
            "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
            "credential": {"type": "string", "minLength": 1, "maxLength": 100},
        },
    },
    "WebhookChange": {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {"events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}}},
    },
    "WebhookTest": {
        "type": "object",
        "required": ["id", "url", "delivered", "status", "error", "ms"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "delivered": {"type": "boolean"},
            "status": {"type": ["integer", "null"]},
            "error": _NULLABLE_STR,
            "ms": {"type": "number"},
        },
    },
}
