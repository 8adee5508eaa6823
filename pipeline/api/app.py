"""The management API's handlers (``/api/v1``): the message log's search, each message's story and
the queue actions on it (retry, hold, release, delete); the stoplist is in :mod:`.suppressions`,
credentials in :mod:`.credentials`, webhook endpoints in :mod:`.webhooks`, DKIM domains in :mod:`.domains`.

Every answer is JSON, errors included (``{"error": ...}`` with the HTTP status). A request needs
``Authorization: Bearer <token>`` (never a query parameter: URLs end up in logs and histories);
without a valid one it gets 401, and a client that keeps failing gets 429 for a while, as SMTP AUTH
failures are throttled. A token scoped to a credential sees that credential's messages only, and
anything else is 404, not 403, so a tenant cannot even learn that a queue id exists.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.api.console import ConsolePorts, add_console
from pipeline.api.credentials import CredentialHandlers
from pipeline.api.domains import DomainHandlers, DomainSettings
from pipeline.api.events import EventHandlers
from pipeline.api.send import SendHandlers, SendPorts
from pipeline.api.suppressions import SuppressionHandlers
from pipeline.api.webhooks import WebhookEndpointAdmin, WebhookHandlers, WebhookSettings
from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType, RecipientState
from pipeline.events.messages import LOG_STATES
from pipeline.events.stats import parse_date, stats_report
from pipeline.ports import (
    ApiPrincipalView,
    ApiTokenVerifier,
    CredentialAdmin,
    EventSink,
    EventStore,
    MessageFilter,
    MessageLog,
    Metrics,
    Spool,
    SuppressionAdmin,
)

log = logging.getLogger("smtpgate.api")

MAX_BODY = 64 * 1024
FAILURES_ALLOWED = 10  # failed tokens per client address within FAILURE_WINDOW, then 429
FAILURE_WINDOW = 60.0
SEARCH_PARAMS = ("recipient", "sender", "message_id", "queue_id", "campaign", "credential", "state", "since",
                 "until", "limit", "cursor")
STATES = LOG_STATES
NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AuthedHandler = Callable[[web.Request, ApiPrincipalView], Awaitable[web.StreamResponse]]


def error(status: int, message: str, **headers: str) -> web.Response:
    """The one shape of every API error."""
    return web.json_response({"error": message}, status=status, headers={**NO_STORE, **headers})


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"m{row_id}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> int:
    """The row id inside a ``next`` cursor; ``ValueError`` for anything a server did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
    if not raw.startswith("m") or not raw[1:].isdigit() or len(raw) > 20:
        raise ValueError("invalid cursor")
    return int(raw[1:])


class FailureThrottle:
    """Failed tokens per client address in a sliding window (bounded: oldest addresses forgotten)."""

    def __init__(self, allowed: int = FAILURES_ALLOWED, window: float = FAILURE_WINDOW, max_clients: int = 10000):
        self.allowed, self.window, self.max_clients = allowed, window, max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self._failures.get(client)
        if q is None:
            if len(self._failures) >= self.max_clients:
                self._failures.pop(next(iter(self._failures)))
            q = self._failures[client] = deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def blocked(self, client: str, now: float) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        q = self._recent(client, now)
        return q[0] + self.window - now if len(q) >= self.allowed else 0.0

    def failed(self, client: str, now: float) -> None:
        self._recent(client, now).append(now)


class ApiApp:
    """Handlers bound to their ports: token verifier, message log, spool (raw bytes while queued,
    queue actions), the event sink (a message deleted from the queue is an event), counters."""

    def __init__(self, tokens: ApiTokenVerifier, log_: MessageLog, spool: Spool, events: EventSink,
                 store: EventStore, metrics: Metrics) -> None:
        self.tokens = tokens
        self.store = store
        self.log = log_
        self.spool = spool
        self.events = events
        self.metrics = metrics
        self.throttle = FailureThrottle()

    # -- middlewares ------------------------------------------------------------------------------
    @web.middleware
    async def json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own errors (404 route, 405, 413 body too large) as JSON too; a bug is a JSON 500."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.reason or "error")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error(500, "internal error")

    def authed(self, handler: AuthedHandler) -> Handler:
        """``handler`` called with the principal of a valid bearer token; else 401 (or 429)."""

        @functools.wraps(handler)  # __wrapped__: the console calls the handler behind its own sign-in
        async def wrapped(request: web.Request) -> web.StreamResponse:
            principal = self._authenticate(request)
            if isinstance(principal, web.Response):
                return principal
            return await handler(request, principal)

        return wrapped

    def _authenticate(self, request: web.Request) -> ApiPrincipalView | web.Response:
        client = request.remote or "-"
        now = time.monotonic()
        wait = self.throttle.blocked(client, now)
        if wait > 0:
            self.metrics["api_auth_failures_total:throttled"] += 1
            return error(429, "too many failed tokens; try again later", **{"Retry-After": str(int(wait) + 1)})
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        principal = self.tokens.verify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if principal is None:
            self.throttle.failed(client, now)
            self.metrics["api_auth_failures_total:invalid"] += 1
            log.info("api: rejected a request from %s without a valid token", client)  # never the token
            return error(401, "a valid bearer token is required", **{"WWW-Authenticate": 'Bearer realm="smtpgate"'})
        return principal

    # -- handlers ---------------------------------------------------------------------------------
    async def openapi(self, request: web.Request) -> web.Response:
        from pipeline.api.openapi import openapi_document  # built on the first request, not at start-up

        return web.json_response(openapi_document(), headers=NO_STORE)

    @staticmethod
    def _filter(request: web.Request, principal: ApiPrincipalView) -> tuple[MessageFilter, int, int | None]:
        q = request.query
        unknown = sorted(set(q) - set(SEARCH_PARAMS))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} (known: {', '.join(SEARCH_PARAMS)})")
        state = q.get("state") or None
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            raise ValueError("limit must be an integer") from None
        if not 1 <= limit <= 200:
            raise ValueError("limit must be between 1 and 200")
        f = MessageFilter(
            recipient=q.get("recipient") or None, sender=q.get("sender") or None,
            message_id=q.get("message_id") or None, queue_id=q.get("queue_id") or None,
            campaign=q.get("campaign") or None,
            # a tenant's token always searches its own credential, whatever it asks for
            credential=principal.credential or q.get("credential") or None, state=state,
            since=parse_date(q["since"]) if q.get("since") else None,
            until=parse_date(q["until"], end=True) if q.get("until") else None,
        )
        if principal.credential and q.get("credential") not in (None, "", principal.credential):
            f = MessageFilter(queue_id="\x00")  # another tenant's credential: nothing, as for a wrong queue id
        return f, limit, decode_cursor(q["cursor"]) if q.get("cursor") else None

    async def search(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        try:
            f, limit, before = self._filter(request, principal)
        except ValueError as exc:
            return error(400, str(exc))
        page, next_id = await asyncio.to_thread(self.log.search, f, limit, before)
        return web.json_response(
            {"messages": page, "next": encode_cursor(next_id) if next_id is not None else None}, headers=NO_STORE
        )

    async def _visible(self, request: web.Request, principal: ApiPrincipalView) -> dict[str, Any] | None:
        """The message's story if this token may see it, else ``None`` (a 404 either way)."""
        queue_id = request.match_info["queue_id"]
        story = await asyncio.to_thread(self.log.message, queue_id)
        if story is None:
            return None
        credential = principal.credential
        if credential is not None and story.get("credential") != credential:
            return None
        return story

    async def show(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        story = await self._visible(request, principal)
        if story is None:
            return error(404, "no such message")
        spooled = await asyncio.to_thread(self.spool.show, story["queue_id"])
        story["spooled"] = spooled is not None
        if spooled is not None:
            story["queue"] = [{k: r[k] for k in ("recipient", "state", "attempts", "next_attempt", "last_reply")}
                              for r in spooled["recipients"]]
            story["raw_url"] = f"/api/v1/messages/{story['queue_id']}/raw"
        return web.json_response(story, headers=NO_STORE, dumps=_dumps)

    async def raw(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        story = await self._visible(request, principal)
        spooled = await asyncio.to_thread(self.spool.show, story["queue_id"]) if story else None
        if spooled is None:
            return error(404, "no such message in the queue (the raw message is kept only while it is spooled)")
        return web.Response(body=spooled["data"], content_type="message/rfc822", headers=NO_STORE)


    async def retry(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """Make the message's waiting copies due now (``smtpgate queue retry``)."""
        story = await self._visible(request, principal)
        if story is None or await asyncio.to_thread(self.spool.show, story["queue_id"]) is None:
            return error(404, "no such message in the queue")
        due = await asyncio.to_thread(self.spool.retry, story["queue_id"])
        return web.json_response({"queue_id": story["queue_id"], "due_now": due}, headers=NO_STORE)

    async def hold(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """Stop the message's waiting copies from being attempted until released (``queue hold``)."""
        story = await self._visible(request, principal)
        spooled = await asyncio.to_thread(self.spool.show, story["queue_id"]) if story else None
        if story is None or spooled is None:
            return error(404, "no such message in the queue")
        if any(r["state"] == RecipientState.PROCESSING for r in spooled["recipients"]):
            return error(409, "a copy is being delivered right now; try again in a moment")
        held = await asyncio.to_thread(self.spool.hold, story["queue_id"])
        log.info("%s: %d copies held by API token %r", story["queue_id"], held, principal.name)
        return web.json_response({"queue_id": story["queue_id"], "held": held}, headers=NO_STORE)

    async def release(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """Held copies are queued and due now (``queue release``)."""
        story = await self._visible(request, principal)
        spooled = await asyncio.to_thread(self.spool.show, story["queue_id"]) if story else None
        if story is None or spooled is None:
            return error(404, "no such message in the queue")
        released = self.spool.unhold(story["queue_id"])  # on the loop: it wakes delivery's loop-bound listener
        log.info("%s: %d copies released by API token %r", story["queue_id"], released, principal.name)
        return web.json_response({"queue_id": story["queue_id"], "released": released}, headers=NO_STORE)

    async def delete(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """Remove a message from the queue; each copy still waiting becomes a ``discarded`` event, so
        the log and the statistics say what became of it. A copy in a delivery attempt is a 409."""
        story = await self._visible(request, principal)
        spooled = await asyncio.to_thread(self.spool.show, story["queue_id"]) if story else None
        if story is None or spooled is None:
            return error(404, "no such message in the queue")
        if any(r["state"] == RecipientState.PROCESSING for r in spooled["recipients"]):
            return error(409, "a copy is being delivered right now; try again in a moment")
        waiting = [r["recipient"] for r in spooled["recipients"]
                   if r["state"] in (RecipientState.QUEUED, RecipientState.DEFERRED, RecipientState.HELD)]
        if not await asyncio.to_thread(self.spool.delete, story["queue_id"]):
            return error(404, "no such message in the queue")
        reason = f"deleted from the queue by API token {principal.name!r}"
        log.info("%s: %s", story["queue_id"], reason)
        for rcpt in waiting:
            await self.events.emit(Event(EventType.DISCARDED, queue_id=story["queue_id"], recipient=rcpt,
                                         credential=story.get("credential"), campaign_id=story.get("campaign_id"),
                                         letter_id=story.get("letter_id"), data={"reason": reason}))
        return web.json_response({"queue_id": story["queue_id"], "discarded": waiting}, headers=NO_STORE)


    async def webhook_deliveries(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """The latest webhook attempts (outbox state, attempts, last error); a tenant's events only."""
        q = request.query
        if set(q) - {"limit", "credential"}:
            return error(400, "unknown parameter (known: limit, credential)")
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            return error(400, "limit must be an integer")
        if not 1 <= limit <= 200:
            return error(400, "limit must be between 1 and 200")
        if principal.credential and q.get("credential") not in (None, "", principal.credential):
            return error(404, "no such credential")
        credential = principal.credential or q.get("credential") or None
        rows = await asyncio.to_thread(self.log.webhook_deliveries, credential, limit)
        return web.json_response({"deliveries": rows}, headers=NO_STORE)

    async def stats(self, request: web.Request, principal: ApiPrincipalView) -> web.Response:
        """Statistics per credential and campaign (a tenant's token: its own credential's only)."""
        q = request.query
        unknown = sorted(set(q) - {"campaign", "credential", "since", "until"})
        if unknown:
            return error(400, f"unknown parameter {unknown[0]!r} (known: campaign, credential, since, until)")
        credential = principal.credential or q.get("credential") or None
        if principal.credential and q.get("credential") not in (None, "", principal.credential):
            return error(404, "no such credential")
        try:
            since = parse_date(q["since"]) if q.get("since") else None
            until = parse_date(q["until"], end=True) if q.get("until") else None
        except ValueError as exc:
            return error(400, str(exc))
        report = await asyncio.to_thread(stats_report, self.store, campaign=q.get("campaign") or None, since=since,
                                         until=until, credential=credential, by_credential=True)
        return web.json_response(report, headers=NO_STORE)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


@dataclass
class ApiPorts:
    """Everything the API works through, wired by the composition root: bearer tokens, the message log,
    the spool (raw bytes, queue actions), the event sink (a deleted message's copies), the event store
    (statistics), the stoplist, the credential store and the config file's credentials, the counters."""

    tokens: ApiTokenVerifier
    log: MessageLog
    spool: Spool
    events: EventSink
    store: EventStore
    suppressions: SuppressionAdmin
    credentials: CredentialAdmin
    metrics: Metrics
    declared_credentials: Sequence[dict[str, Any]] = field(default_factory=list)
    global_webhooks: Sequence[str] = field(default_factory=list)
    console: ConsolePorts | None = None  # the web console under /console/ (None: not served)
    send: SendPorts | None = None  # POST /api/v1/messages (pipeline/api/send.py); absent: not offered
    webhook_endpoints: WebhookEndpointAdmin | None = None  # endpoints added over the API (none: not offered)
    webhook_settings: WebhookSettings = field(default_factory=WebhookSettings)
    domains: DomainSettings = field(default_factory=DomainSettings)


def build_api_app(ports: ApiPorts) -> web.Application:
    """The ``/api/v1`` routes on their ports, with JSON errors, bearer tokens and a body limit."""
    p = ports
    a = ApiApp(p.tokens, p.log, p.spool, p.events, p.store, p.metrics)
    s = SuppressionHandlers(p.suppressions)
    c = CredentialHandlers(p.credentials, p.declared_credentials)
    app = web.Application(middlewares=[a.json_errors], client_max_size=MAX_BODY)
    app.router.add_get("/api/v1/openapi.json", a.openapi, name="openapi")  # public: it describes, holds no data
    app.router.add_get("/api/v1/messages", a.authed(a.search), name="messages")
    app.router.add_get("/api/v1/messages/{queue_id}", a.authed(a.show), name="message")
    if p.send is not None:
        app.router.add_post("/api/v1/messages", a.authed(SendHandlers(p.send).send), name="message_send")
    app.router.add_get("/api/v1/messages/{queue_id}/raw", a.authed(a.raw), name="message_raw")
    app.router.add_delete("/api/v1/messages/{queue_id}", a.authed(a.delete), name="message_delete")
    app.router.add_post("/api/v1/messages/{queue_id}/retry", a.authed(a.retry), name="message_retry")
    app.router.add_post("/api/v1/messages/{queue_id}/hold", a.authed(a.hold), name="message_hold")
    app.router.add_post("/api/v1/messages/{queue_id}/release", a.authed(a.release), name="message_release")
    app.router.add_get("/api/v1/stats", a.authed(a.stats), name="stats")
    app.router.add_get("/api/v1/events", a.authed(EventHandlers(p.store).list), name="events")
    app.router.add_get("/api/v1/credentials", a.authed(c.list), name="credentials")
    app.router.add_get("/api/v1/webhooks/deliveries", a.authed(a.webhook_deliveries), name="webhook_deliveries")
    if p.webhook_endpoints is not None:
        w = WebhookHandlers(p.webhook_endpoints, p.credentials, p.log, p.declared_credentials, p.global_webhooks,
                            p.webhook_settings)
        app.router.add_get("/api/v1/webhooks", a.authed(w.list), name="webhooks")
        app.router.add_post("/api/v1/webhooks", a.authed(w.add), name="webhook_add")
        app.router.add_delete("/api/v1/webhooks/{id}", a.authed(w.remove), name="webhook_remove")
        app.router.add_patch("/api/v1/webhooks/{id}", a.authed(w.change), name="webhook_change")
        app.router.add_post("/api/v1/webhooks/{id}/test", a.authed(w.test), name="webhook_test")
        app.router.add_get("/api/v1/webhooks/{id}/deliveries", a.authed(w.deliveries), name="webhook_attempts")
    d = DomainHandlers(p.domains, p.credentials, p.declared_credentials)
    app.router.add_get("/api/v1/domains", a.authed(d.list), name="domains")
    app.router.add_get("/api/v1/domains/{domain}", a.authed(d.show), name="domain")
    app.router.add_get("/api/v1/domains/{domain}/check", a.authed(d.check), name="domain_check")
    app.router.add_post("/api/v1/credentials", a.authed(c.add), name="credential_add")
    for action in ("disable", "enable", "rotate"):
        app.router.add_post(f"/api/v1/credentials/{{name}}/{action}", a.authed(getattr(c, action)),
                            name=f"credential_{action}")
    app.router.add_get("/api/v1/suppressions", a.authed(s.list), name="suppressions")
    app.router.add_post("/api/v1/suppressions", a.authed(s.add), name="suppression_add")
    app.router.add_get("/api/v1/suppressions.csv", a.authed(s.csv), name="suppressions_csv")
    app.router.add_delete("/api/v1/suppressions/{address}", a.authed(s.remove), name="suppression_remove")
    if p.console is not None:
        add_console(app, p.console, a, s)
    return app
