"""The console's routes: sign-in, sessions, CSRF, security headers and the pages.

Reads go through the ``/api/v1`` handlers themselves (called in-process with the console's request,
whose route parameters and query strings have the API's names), so a page shows the same data
and the same tenant scoping as ``GET /api/v1/...``; writes that take a JSON body in the API use
the same ports and validation here. Templates are Jinja2 with autoescaping on for every file:
every value a sender controls (subjects, addresses, campaign names, headers) is text, never markup.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlencode

from aiohttp import web

from pipeline.api.console.sessions import PresessionSigner, Session, SessionStore, csrf_ok
from pipeline.api.suppressions import MAX_REASON, SuppressionHandlers, _valid_address
from pipeline.events.messages import LOG_STATES
from pipeline.ports import ApiPrincipalView, MessageFilter, MessageLog, Metrics, Spool

if TYPE_CHECKING:  # imported on the first page rendered (_environment): a console nobody opens costs no Jinja2
    import jinja2

log = logging.getLogger("smtpgate.console")

PREFIX = "/console"
SESSION_COOKIE = "__Host-smtpgate-console"  # __Host-: Secure, Path=/, no Domain: no subdomain can plant it
PRESESSION_COOKIE = "__Host-smtpgate-signin"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "Cross-Origin-Opener-Policy": "same-origin",
}
SEARCH_FIELDS = ("recipient", "sender", "campaign", "state", "since", "until")
QUEUE_PAGE = 50
API_ROUTES = (
    ("messages", "GET"), ("message", "GET"), ("message_raw", "GET"), ("message_hold", "POST"),
    ("message_release", "POST"), ("message_retry", "POST"), ("suppressions", "GET"), ("credentials", "GET"),
    ("credential_disable", "POST"), ("credential_enable", "POST"), ("webhooks", "GET"),
    ("webhook_deliveries", "GET"), ("stats", "GET"), ("domains", "GET"), ("domain", "GET"), ("domain_check", "GET"),
)  # fmt: skip
"""The ``/api/v1`` routes (name, method) whose handlers the console calls (tests/test_console.py checks
that the API still serves each)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ApiHandler = Callable[[web.Request, ApiPrincipalView], Awaitable[web.StreamResponse]]
Page = Callable[[web.Request, "Signed"], Awaitable[web.StreamResponse]]


class ConsolePrincipal(Protocol):
    """Who a token speaks for, with the id a session remembers instead of the token."""

    @property
    def token_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def credential(self) -> str | None: ...


class ConsoleTokens(Protocol):
    """The API tokens as the console uses them: check one at sign-in, find it again by id."""

    def verify(self, token: str) -> ConsolePrincipal | None: ...

    def principal(self, token_id: str) -> ConsolePrincipal | None: ...


class Throttle(Protocol):
    """Failed tokens per client address (shared with the API: one budget for both doors)."""

    def blocked(self, client: str, now: float) -> float: ...

    def failed(self, client: str, now: float) -> None: ...


class ApiBackend(Protocol):
    """What the console uses of :class:`pipeline.api.app.ApiApp` besides its handlers (which it finds
    by route name): the message log and spool (the queue page), the failed-token throttle and counters."""

    @property
    def log(self) -> MessageLog: ...

    @property
    def spool(self) -> Spool: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def throttle(self) -> Throttle: ...


@dataclass
class ConsolePorts:
    """What the console needs beyond the API's handlers: the token store (by id, for sessions)."""

    tokens: ConsoleTokens
    sessions: SessionStore = field(default_factory=SessionStore)


@dataclass(frozen=True)
class Signed:
    """A request's signed-in browser: the principal and its session (CSRF token, flash)."""

    principal: ConsolePrincipal
    session: Session


def _utc(ts: Any) -> str:
    """Unix seconds as a UTC time a person reads (and a machine parses: ISO 8601)."""
    if not isinstance(ts, int | float):
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(ts: Any) -> str:
    """Unix seconds as the ``datetime`` attribute of ``<time>`` (a valid global date and time)."""
    if not isinstance(ts, int | float):
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _percent(value: Any) -> str:
    return f"{float(value) * 100:.1f}%" if isinstance(value, int | float) else ""


def _text(value: Any) -> str:
    """A value a table cell shows: strings as they are, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


def _details(event: dict[str, Any]) -> list[tuple[str, str]]:
    """An event's fields beyond type, time and recipient (reply, relay, url...), for the timeline."""
    return [
        (k, _text(v))
        for k, v in event.items()
        if k not in ("type", "at", "recipient") and v not in (None, "")
    ]


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.api.console", "templates"),
        autoescape=True,  # every template, whatever its name: values are text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["iso"] = _iso
    env.filters["percent"] = _percent
    env.filters["text"] = _text
    env.filters["details"] = _details
    return env


def safe_back(value: str | None, default: str = PREFIX + "/") -> str:
    """A same-console path to go back to after a POST; anything else (another host, ``//x``,
    backslashes, a scheme) is replaced by ``default``: no open redirect."""
    if not value or not value.startswith(PREFIX + "/") or value.startswith("//") or "\\" in value:
        return default
    if any(c in value for c in "\r\n") or len(value) > 2000:
        return default
    return value


def secure_transport(request: web.Request) -> bool:
    """Whether a browser will keep a ``Secure`` cookie from this page: HTTPS (here or at a proxy that
    says so), or a loopback host, which browsers treat as a secure context over plain http."""
    if request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https":
        return True
    host = (request.url.host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _json(response: web.StreamResponse) -> tuple[int, Any]:
    """An API handler's answer as (status, decoded JSON)."""
    assert isinstance(response, web.Response)
    text = response.text or ""
    return response.status, json.loads(text) if text else None


class Console:
    """The console's handlers, bound to the API's handlers and the console's ports."""

    def __init__(self, ports: ConsolePorts, api: ApiBackend, suppressions: SuppressionHandlers,
                 root: web.Application) -> None:  # fmt: skip
        self.ports = ports
        self.tokens = ports.tokens
        self.sessions = ports.sessions
        self.api = api
        self.suppressions = suppressions
        self.root = root  # the API's app: its handlers are found by route name
        self.signer = PresessionSigner()

    @functools.cached_property
    def env(self) -> jinja2.Environment:
        """The templates, loaded on the first page: the gateway serves mail without ever loading Jinja2."""
        return _environment()

    @functools.cached_property
    def css(self) -> bytes:
        return (resources.files("pipeline.api.console") / "static" / "console.css").read_bytes()

    def api_handler(self, name: str, method: str = "GET") -> ApiHandler | None:
        """The ``/api/v1`` handler the API serves under route ``name`` (unwrapped from its bearer-token
        check: the console has its own sign-in), or ``None`` when the API has no such route."""
        try:
            resource = self.root.router[name]
        except KeyError:
            return None
        for route in resource:
            if route.method == method:
                inner = getattr(route.handler, "__wrapped__", None)
                return cast(ApiHandler, inner) if inner is not None else None
        return None

    async def call_api(
        self, name: str, request: web.Request, signed: Signed, method: str = "GET"
    ) -> tuple[int, Any]:
        """(status, JSON) of the API's handler for route ``name``, called in-process with this request
        (same route parameters and query names) and the signed-in token's principal."""
        handler = self.api_handler(name, method)
        if handler is None:
            raise web.HTTPNotFound()
        return await _json(await handler(request, signed.principal))

    # -- middleware and responses ------------------------------------------------------------
    @web.middleware
    async def headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Security headers on every console answer, and HTML (not the API's JSON) for errors."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                exc.headers.update(SECURITY_HEADERS)
                raise
            response = self.error_page(request, exc.status, exc.reason or "Error", None)
        except Exception:
            log.exception("console: %s %s failed", request.method, request.path)
            response = self.error_page(
                request,
                500,
                "Something went wrong",
                "The error was logged. Try again, or look at the gateway's log.",
            )
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def render(
        self, request: web.Request, template: str, signed: Signed | None, status: int = 200, **context: Any
    ) -> web.Response:
        flash: list[str] = []
        if signed is not None:
            flash, signed.session.flash = signed.session.flash, []
        body = self.env.get_template(template).render(
            request=request,
            signed=signed,
            principal=signed.principal if signed else None,
            csrf=signed.session.csrf if signed else "",
            flash=flash,
            prefix=PREFIX,
            here=request.path_qs,
            **context,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def error_page(
        self, request: web.Request, status: int, title: str, detail: str | None, signed: Signed | None = None
    ) -> web.Response:
        return self.render(request, "error.html", signed, status=status, title=title, detail=detail)

    @staticmethod
    def redirect(location: str) -> web.Response:
        return web.Response(status=303, headers={"Location": location})

    # -- sessions ------------------------------------------------------------------------------
    def _signed(self, request: web.Request) -> Signed | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie or len(cookie) > 100:
            return None
        session = self.sessions.get(cookie)
        if session is None:
            return None
        principal = self.tokens.principal(session.token_id)
        if principal is None:  # the token was revoked: its sessions end with it
            self.sessions.end_token(session.token_id)
            return None
        return Signed(principal, session)

    def page(self, handler: Page) -> Handler:
        """``handler`` for a signed-in browser; otherwise a redirect to the sign-in form (which
        comes back here). A POST must carry the session's CSRF token: 403 otherwise."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            signed = self._signed(request)
            if signed is None:
                if request.method not in ("GET", "HEAD"):
                    return self.error_page(
                        request,
                        403,
                        "Signed out",
                        "Your session ended. Sign in again, then repeat what you did.",
                    )
                return self.redirect(f"{PREFIX}/sign-in?" + urlencode({"next": request.path_qs}))
            if request.method == "POST":
                refused = await self._csrf_refusal(request, signed.session.csrf)
                if refused is not None:
                    return refused
            return await handler(request, signed)

        return wrapped

    async def _csrf_refusal(self, request: web.Request, expected: str) -> web.Response | None:
        form = await request.post()
        given = form.get("csrf")
        # Fetch Metadata (OWASP): a browser says where a request came from; only this origin may post
        cross_site = request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site")
        if cross_site or not csrf_ok(expected, given if isinstance(given, str) else None):
            log.info(
                "console: refused a %s %s without a valid CSRF token from %s",
                request.method,
                request.path,
                request.remote or "-",
            )
            return self.error_page(
                request,
                403,
                "This form cannot be accepted",
                "It was not sent from this console's current page (a missing or wrong "
                "security token). Go back, reload the page and try again.",
            )
        return None

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: float | None) -> None:
        """Every console cookie, set or cleared, is ``Secure; HttpOnly; SameSite=Strict; Path=/``."""
        response.set_cookie(
            name,
            value,
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
            max_age=int(max_age) if max_age is not None else None,
        )

    def _clear_cookie(self, response: web.StreamResponse, name: str) -> None:
        self._set_cookie(response, name, "", 0)

    # -- sign-in and sign-out ------------------------------------------------------------------
    async def sign_in_form(self, request: web.Request) -> web.StreamResponse:
        next_ = safe_back(request.query.get("next"))
        if self._signed(request) is not None:
            return self.redirect(next_)
        return self._sign_in_page(request, next_, None, 200)

    def _sign_in_page(
        self, request: web.Request, next_: str, problem: str | None, status: int
    ) -> web.Response:
        nonce, value = self.signer.issue()
        response = self.render(
            request, "sign_in.html", None, status=status, next=next_, signin_csrf=value, problem=problem,
            insecure=not secure_transport(request),
        )  # fmt: skip
        self._set_cookie(response, PRESESSION_COOKIE, nonce, self.signer.max_age)
        return response

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        next_ = safe_back(str(form.get("next", "")))
        csrf = form.get("csrf")
        if not self.signer.check(
            request.cookies.get(PRESESSION_COOKIE), csrf if isinstance(csrf, str) else None
        ):
            return self.error_page(
                request,
                403,
                "This form cannot be accepted",
                "The sign-in form was out of date or not sent from this console. "
                "Reload the sign-in page and try again.",
            )
        client, now = request.remote or "-", time.monotonic()
        wait = self.api.throttle.blocked(client, now)
        if wait > 0:
            self.api.metrics["api_auth_failures_total:throttled"] += 1
            response = self._sign_in_page(
                request,
                next_,
                f"Too many failed tokens from this address. Try again in {int(wait) + 1} seconds.",
                429,
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        token = form.get("token")
        principal = self.tokens.verify(token.strip()) if isinstance(token, str) and token.strip() else None
        if principal is None:
            self.api.throttle.failed(client, now)
            self.api.metrics["api_auth_failures_total:invalid"] += 1
            log.info("console: refused a sign-in from %s without a valid token", client)  # never the token
            return self._sign_in_page(request, next_, "That is not a valid API token.", 401)
        session_id, session = self.sessions.create(principal.token_id)
        log.info("console: API token %r signed in from %s", principal.name, client)
        response = self.redirect(next_)
        self._set_cookie(response, SESSION_COOKIE, session_id, self.sessions.lifetime)
        self._clear_cookie(response, PRESESSION_COOKIE)
        return response

    async def sign_out(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(SESSION_COOKIE, ""))
        response = self.redirect(f"{PREFIX}/sign-in")
        self._clear_cookie(response, SESSION_COOKIE)
        return response

    # -- static --------------------------------------------------------------------------------
    async def stylesheet(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.css, content_type="text/css", charset="utf-8")
        response.headers["Cache-Control"] = "max-age=3600"
        return response

    # -- the message log -----------------------------------------------------------------------
    async def messages(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        allowed = {
            *SEARCH_FIELDS,
            "cursor",
            "limit",
            *(() if signed.principal.credential else ("credential",)),
        }
        unknown = sorted(set(request.query) - allowed)
        problem, page, next_url = None, [], None
        if unknown:
            problem = f"Unknown search field {unknown[0]!r}."
        else:
            status, body = await self.call_api("messages", request, signed)
            if status != 200:
                problem = body.get("error") if isinstance(body, dict) else "The search failed."
            else:
                page = body["messages"]
                if body["next"]:
                    query = {k: v for k, v in request.query.items() if v and k != "cursor"}
                    next_url = f"{PREFIX}/messages?" + urlencode({**query, "cursor": body["next"]})
        searched = any(request.query.get(k) for k in SEARCH_FIELDS)
        first_url = f"{PREFIX}/messages?" + urlencode(
            {k: v for k, v in request.query.items() if v and k != "cursor"}
        )
        return self.render(
            request,
            "messages.html",
            signed,
            status=400 if problem else 200,
            messages=page,
            query=request.query,
            states=LOG_STATES,
            problem=problem,
            next_url=next_url,
            first_url=first_url if "cursor" in request.query else None,
            searched=searched,
        )

    async def message(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        status, story = await self.call_api("message", request, signed)
        if status != 200:
            return self.error_page(
                request,
                404,
                "No such message",
                "There is no message with this queue id that your token may see.",
                signed,
            )
        return self.render(request, "message.html", signed, story=story)

    @staticmethod
    def flash(signed: Signed, text: str) -> None:
        """A line for the next page (what a POST did); a few at most, however many POSTs came first."""
        signed.session.flash = [*signed.session.flash, text][-5:]

    async def raw(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        """The spooled message as a download (``GET /api/v1/messages/{id}/raw``), never shown inline."""
        handler = self.api_handler("message_raw")
        response = await handler(request, signed.principal) if handler is not None else None
        if not isinstance(response, web.Response) or response.status != 200 or response.body is None:
            return self.error_page(request, 404, "Not in the queue",
                                   "The raw message is kept only while the message is in the queue.", signed)  # fmt: skip
        queue_id = request.match_info["queue_id"]
        return web.Response(body=response.body, content_type="message/rfc822", headers={
            "Content-Disposition": f'attachment; filename="{queue_id}.eml"'})  # fmt: skip

    async def queue_action(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        action = request.match_info["action"]
        if action not in ("hold", "release", "retry"):
            raise web.HTTPNotFound()
        queue_id = request.match_info["queue_id"]
        status, body = await self.call_api(f"message_{action}", request, signed, "POST")
        if status == 200:
            count = body.get({"hold": "held", "release": "released", "retry": "due_now"}[action], 0)
            what = {"hold": "held", "release": "released", "retry": "made due now"}[action]
            self.flash(signed, f"{queue_id}: {count} {'copy' if count == 1 else 'copies'} {what}.")
        elif status == 404:
            return self.error_page(
                request,
                404,
                "Not in the queue",
                "This message is not in the queue (any more), or your token may not see it.",
                signed,
            )
        else:
            self.flash(signed, f"{queue_id}: {body.get('error', 'the action failed')}")
        form = await request.post()
        return self.redirect(safe_back(str(form.get("back", "")), f"{PREFIX}/messages/{queue_id}"))

    async def queue(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        """The messages still spooled, oldest first, each with its copies' states and the actions."""
        try:
            page_no = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page_no = 1
        rows = await asyncio.to_thread(self.api.spool.list_recipients)
        groups: dict[str, dict[str, Any]] = {}
        for r in rows:
            g = groups.setdefault(
                r["queue_id"],
                {
                    "queue_id": r["queue_id"],
                    "mail_from": r["mail_from"],
                    "created_at": r["created_at"],
                    "size": r["size"],
                    "recipients": [],
                },
            )
            g["recipients"].append(r)
        credential = signed.principal.credential
        if credential is not None:
            mine = await asyncio.to_thread(self._tenant_queue_ids, credential)
            groups = {q: g for q, g in groups.items() if q in mine}
        listed = list(groups.values())
        shown = listed[(page_no - 1) * QUEUE_PAGE : page_no * QUEUE_PAGE]
        for g in shown:
            found, _ = await asyncio.to_thread(
                self.api.log.search, MessageFilter(queue_id=g["queue_id"]), 1, None
            )
            g["summary"] = found[0] if found else {}
        pages = max(1, -(-len(listed) // QUEUE_PAGE))
        return self.render(
            request, "queue.html", signed, groups=shown, total=len(listed), page_no=page_no, pages=pages
        )

    def _tenant_queue_ids(self, credential: str) -> set[str]:
        """The tenant's messages that may still be queued (the log keeps a held copy's last state)."""
        ids: set[str] = set()
        for state in ("queued", "deferred"):
            before = None
            for _ in range(20):  # at most 4,000 per state: a page of the queue, not an export
                found, before = self.api.log.search(
                    MessageFilter(credential=credential, state=state), 200, before
                )
                ids.update(m["queue_id"] for m in found)
                if before is None:
                    break
        return ids

    # -- suppressions --------------------------------------------------------------------------
    async def suppression_list(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        status, body = await self.call_api("suppressions", request, signed)
        if status != 200:
            return self.error_page(
                request, status, "Suppressions", body.get("error") if body else None, signed
            )
        return self.render(
            request,
            "suppressions.html",
            signed,
            rows=body["suppressions"],
            credential=request.query.get("credential", ""),
            max_reason=MAX_REASON,
        )

    async def suppression_add(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        form = await request.post()
        address = _valid_address(form.get("address"))
        reason = str(form.get("reason") or "manual").strip()
        scope = self.suppressions._scope(signed.principal, form.get("credential") or None)
        if (
            address is None
            or scope is None
            or not reason
            or len(reason) > MAX_REASON
            or not reason.isprintable()
        ):
            self.flash(
                signed,
                "Not added: give a mailbox such as user@example.net, a reason of "
                f"1-{MAX_REASON} characters and a credential your token may use.",
            )
        else:
            added = await asyncio.to_thread(self.suppressions.store.suppress, address, scope, reason)
            where = f"for {scope}" if scope else "for every credential"
            self.flash(signed, f"{address} {'added' if added else 'was already suppressed'} {where}.")
        return self.redirect(f"{PREFIX}/suppressions")

    async def suppression_remove(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        form = await request.post()
        address = _valid_address(form.get("address"))
        scope = self.suppressions._scope(signed.principal, form.get("credential") or None)
        removed = 0
        if address is not None and scope is not None:
            removed = await asyncio.to_thread(self.suppressions.store.unsuppress, address, scope)
        self.flash(signed, f"{address} removed." if removed else "Nothing removed: no such suppression.")
        return self.redirect(f"{PREFIX}/suppressions")

    # -- credentials, webhooks, domains, statistics --------------------------------------------
    async def credential_list(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        _, body = await self.call_api("credentials", request, signed)
        return self.render(request, "credentials.html", signed, rows=body["credentials"])

    async def credential_action(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        action, name = request.match_info["action"], request.match_info["name"]
        if action not in ("disable", "enable"):
            raise web.HTTPNotFound()
        status, body = await self.call_api(f"credential_{action}", request, signed, "POST")
        if status == 404:
            return self.error_page(request, 404, "No such credential", None, signed)
        self.flash(signed, f"{name}: {action}d." if status == 200 else f"{name}: {body.get('error')}")
        return self.redirect(f"{PREFIX}/credentials")

    async def webhooks(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        _, endpoints = await self.call_api("webhooks", request, signed)
        status, deliveries = await self.call_api("webhook_deliveries", request, signed)
        return self.render(
            request,
            "webhooks.html",
            signed,
            endpoints=endpoints["endpoints"],
            deliveries=deliveries["deliveries"] if status == 200 else [],
        )

    async def domains(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        """The domains this token may see (``GET /api/v1/domains``: a tenant its sender domains)."""
        _, body = await self.call_api("domains", request, signed)
        return self.render(request, "domains.html", signed, domains=body.get("domains", []))

    async def domain(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        """One domain: the records to publish and, on demand (``?check=1``, a bookmarkable link),
        what DNS answers now, from the API's own handlers."""
        status, entry = await self.call_api("domain", request, signed)
        if status == 404:
            return self.error_page(request, 404, "No such domain", None, signed)
        check = None
        if request.query.get("check") == "1":
            _, check = await self.call_api("domain_check", request, signed)
        return self.render(request, "domain.html", signed, entry=entry, check=check)

    async def stats(self, request: web.Request, signed: Signed) -> web.StreamResponse:
        status, report = await self.call_api("stats", request, signed)
        problem = None if status == 200 else (report or {}).get("error", "The statistics failed.")
        return self.render(
            request,
            "stats.html",
            signed,
            status=200 if status == 200 else 400,
            report=report if status == 200 else None,
            problem=problem,
            query=request.query,
        )

    async def home(self, request: web.Request) -> web.StreamResponse:
        return self.redirect(f"{PREFIX}/messages")


CONSOLE = web.AppKey("console", Console)
"""The console mounted on an API app (``app[CONSOLE]``)."""


def add_console(app: web.Application, ports: ConsolePorts, api: ApiBackend,
                suppressions: SuppressionHandlers) -> Console:  # fmt: skip
    """Mount the console under ``/console/`` on the API's app (``/`` leads there). The API's own
    handlers are looked up by route name when a page needs them, so routes added later count too."""
    c = Console(ports, api, suppressions, app)
    sub = web.Application(middlewares=[c.headers])
    sub.router.add_get("/", c.home)
    sub.router.add_get("/static/console.css", c.stylesheet)
    sub.router.add_get("/sign-in", c.sign_in_form)
    sub.router.add_post("/sign-in", c.sign_in)
    sub.router.add_post("/sign-out", c.page(c.sign_out))
    sub.router.add_get("/messages", c.page(c.messages))
    sub.router.add_get("/messages/{queue_id}", c.page(c.message))
    sub.router.add_get("/messages/{queue_id}/raw", c.page(c.raw))
    sub.router.add_post("/messages/{queue_id}/{action}", c.page(c.queue_action))
    sub.router.add_get("/queue", c.page(c.queue))
    sub.router.add_get("/suppressions", c.page(c.suppression_list))
    sub.router.add_post("/suppressions", c.page(c.suppression_add))
    sub.router.add_post("/suppressions/remove", c.page(c.suppression_remove))
    sub.router.add_get("/credentials", c.page(c.credential_list))
    sub.router.add_post("/credentials/{name}/{action}", c.page(c.credential_action))
    sub.router.add_get("/webhooks", c.page(c.webhooks))
    sub.router.add_get("/domains", c.page(c.domains))
    sub.router.add_get("/domains/{domain}", c.page(c.domain))
    sub.router.add_get("/stats", c.page(c.stats))
    app.add_subapp(PREFIX, sub)
    app.router.add_get("/", c.home)
    app[CONSOLE] = c
    return c


__all__ = ["CONSOLE", "ConsolePorts", "add_console", "safe_back"]
