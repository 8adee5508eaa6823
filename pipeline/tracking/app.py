"""The tracking endpoints.

- ``GET /c/{token}``: a genuine click token records ``clicked`` and answers ``302`` to exactly the
  signed URL; anything else (tampered, truncated, another key, another kind) is a 404 page,
  never a redirect, so the service can't be used as an open redirect.
- ``GET /o/{token}.gif``: always the 1x1 GIF with ``Cache-Control: no-store``; only a genuine
  open token records ``opened``.
- ``GET /u/{token}``: a confirmation page with a button; ``POST /u/{token}`` (RFC 8058 one-click)
  records ``unsubscribed`` (which suppresses the address) and answers 200, never a redirect.
- ``/healthz``; ``/metrics``, ``/api/stats`` and ``/stats`` for admin networks (and token) only.

Recording waits for the event store's group commit but at most ``RECORD_TIMEOUT`` seconds:
a redirect must not wait on a stuck disk (the commit still completes in the background). A click
or an open the store did not take (failed, too slow, or the database known to be down) is held in
the :class:`~pipeline.events.backlog.EventBacklog` and written, in order and once, when the store
answers again; while anything is held, new events queue behind it (order kept) and the redirect
does not wait at all. The "delivered when?" look-up of machine detection runs in a thread of its
own, at most ``LOOKUP_WAIT`` seconds, and is skipped while the database is down (fallback: unknown).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from pipeline.config import Config, ConfigError
from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.events.backlog import EventBacklog
from pipeline.events.machine import MachineDetector
from pipeline.events.stats import parse_date, stats_report
from pipeline.ports import EventSink, EventStore, Metrics
from pipeline.toolkit.tokens import load_signer
from pipeline.tracking.metrics import WebhookStats, render_metrics
from pipeline.tracking.page import render_stats_page

log = logging.getLogger("smtpgate.tracking")

RECORD_TIMEOUT = 2.0
LOOKUP_WAIT = 1.0
"""Seconds a click or an open waits for the "delivered when?" look-up before answering without it."""
BACKLOG: web.AppKey[EventBacklog] = web.AppKey("backlog", EventBacklog)
"""Where the app keeps its backlog (the service reads its size for ``/metrics``)."""

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache", "Expires": "0"}

_NOT_FOUND = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Link not found</title></head>
<body><h1>Link not found</h1><p>This link is not valid. Check that it was copied completely.</p></body></html>"""

_UNSUB_FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>Unsubscribe</h1><p>Stop sending mail to <strong>{address}</strong>?</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit" id="unsubscribe">Unsubscribe</button></form></body></html>"""

_UNSUB_DONE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Unsubscribed</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>You are unsubscribed</h1><p><strong>{address}</strong> will get no more of these messages.</p></body></html>"""


def _safe_url(url: Any) -> bool:
    """Only http(s) URLs without control characters are redirect targets, even when signed."""
    if not isinstance(url, str) or not url:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return False
    return url.lower().startswith(("http://", "https://"))


class TrackingApp:
    """Handlers bound to their ports: the event sink clicks go to, the store statistics and
    machine detection read, the counters ``/metrics`` shows, the webhook senders it reports on."""

    def __init__(
        self,
        config: Config,
        events: EventSink,
        store: EventStore,
        metrics: Metrics,
        webhooks: Sequence[WebhookStats] = (),
        database_up: Callable[[], bool] = lambda: True,
    ) -> None:
        cfg = config.tracking
        self.events = events
        self.store = store
        self.database_up = database_up  # False while the shared database is known to be away
        self.backlog = EventBacklog(events, metrics, "tracking")
        self._lookups = ThreadPoolExecutor(2, thread_name_prefix="tracking-lookup")  # never the loop's own
        self.webhooks = list(webhooks)
        self.signer = load_signer(cfg.keys, cfg.key_id, config.data_dir, config.storage.url)
        try:
            self.detector = MachineDetector(cfg.machine_user_agents, cfg.machine_seconds)
        except re.error as exc:
            raise ConfigError(f"{config.source}: tracking.machine_user_agents: bad regex: {exc}") from None
        try:
            self.admin_networks = [ipaddress.ip_network(n, strict=False) for n in cfg.admin_networks]
        except ValueError as exc:
            raise ConfigError(f"{config.source}: tracking.admin_networks: {exc}") from None
        self.admin_token = cfg.admin_token
        self.counters = metrics

    # -- helpers ------------------------------------------------------------------------------
    def _payload(self, token: str, kind: str) -> dict[str, Any] | None:
        payload = self.signer.verify(token)
        if payload is None or payload.get("k") != kind:
            return None
        return payload

    async def _delivered_at(self, queue_id: str, recipient: str) -> float | None:
        """When the copy was delivered, if the store says so within ``LOOKUP_WAIT``; else ``None``."""
        if not self.database_up() or len(self.backlog):
            return None  # known to be away: don't make every click wait to find out again
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._lookups, self.store.delivered_at, queue_id, recipient), LOOKUP_WAIT
            )
        except Exception as exc:  # a busy or absent database must not break a redirect
            log.debug("delivered_at look-up failed: %s", exc)
            return None

    async def _event(self, type_: EventType, payload: dict[str, Any], request: web.Request, **extra: Any) -> Event:
        data: dict[str, Any] = {}
        ua = request.headers.get("User-Agent", "")
        now = time.time()
        if type_ in (EventType.OPENED, EventType.CLICKED):
            delivered = None
            if payload.get("q") and payload.get("r") and self.detector.seconds > 0:
                delivered = await self._delivered_at(payload["q"], payload["r"])
            reason = self.detector.reason(ua, now, delivered)
            data["machine"] = reason is not None
            if reason:
                data["machine_reason"] = reason
        data["user_agent"] = ua[:300]
        return Event(
            type=type_, queue_id=payload.get("q"), recipient=payload.get("r"), credential=payload.get("s"),
            campaign_id=payload.get("c"), letter_id=payload.get("l"), time=now, data=data, **extra,
        )

    async def _record(self, event: Event, *, strict: bool = False) -> bool:
        """Record within ``RECORD_TIMEOUT``; ``False`` if that failed or took too long.

        Not ``strict`` (clicks, opens): an event the store did not take is held in the backlog and
        written later under the same ``origin`` (stored once even if the first attempt commits late);
        while anything is held or the database is known down, the event goes straight to the backlog.
        """
        origin = uuid.uuid4().hex
        if not strict and (len(self.backlog) or not self.database_up()):
            return self.backlog.hold(event, origin)
        task = asyncio.ensure_future(self.events.emit(event, strict=True, origin=origin))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # late failures: retried or answered
        try:
            await asyncio.wait_for(asyncio.shield(task), RECORD_TIMEOUT)
            return True
        except TimeoutError:
            log.warning("recording %s took over %g s; answering anyway", event.type, RECORD_TIMEOUT)
        except Exception as exc:
            if strict:  # not stored, and not held: the client is told to retry
                self.counters["event_store_errors_total"] += 1
                log.error("recording %s failed: %s", event.type, exc)
        if not strict:
            self.backlog.hold(event, origin)
        return False

    def _admin_ok(self, request: web.Request) -> bool:
        try:
            peer = ipaddress.ip_address((request.remote or "").split("%")[0])
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
        if not any(peer in net for net in self.admin_networks):
            return False
        if self.admin_token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            given = given or request.query.get("token", "")
            return hmac.compare_digest(given.encode(), self.admin_token.encode())
        return True

    @staticmethod
    def _not_found() -> web.Response:
        return web.Response(status=404, text=_NOT_FOUND, content_type="text/html", headers=NO_STORE)

    # -- handlers -----------------------------------------------------------------------------
    async def click(self, request: web.Request) -> web.Response:
        payload = self._payload(request.match_info["token"], "c")
        url = payload.get("u") if payload else None
        if payload is None or not _safe_url(url):
            self.counters["clicks_total:invalid"] += 1
            return self._not_found()
        assert isinstance(url, str)
        await self._record(await self._event(EventType.CLICKED, payload, request, url=url))
        location = url
        if not url.isascii():
            # RFC 3986 on the wire, the resource a browser would request for the same href: the
            # host as IDNA, every other non-ASCII character as UTF-8 percent escapes (the
            # ASCII, existing escapes included, untouched).
            import urllib.parse

            keep = "".join(map(chr, range(0x21, 0x7F)))
            parts = urllib.parse.urlsplit(url)
            netloc = parts.netloc
            if not netloc.isascii():
                userinfo, at, hostport = netloc.rpartition("@")
                host, colon, port = hostport.partition(":")
                try:
                    host = host.encode("idna").decode("ascii")
                except UnicodeError:
                    host = urllib.parse.quote(host, safe=keep)
                netloc = urllib.parse.quote(userinfo + at, safe=keep) + host + colon + port
            rest = urllib.parse.quote(urllib.parse.urlunsplit(("", "", *parts[2:])), safe=keep)
            location = f"{parts.scheme}://{netloc}{rest}"
        return web.Response(status=302, headers={"Location": location, **NO_STORE})

    async def open(self, request: web.Request) -> web.Response:
        payload = self._payload(request.match_info["token"], "o")
        if payload is not None:
            await self._record(await self._event(EventType.OPENED, payload, request))
        else:
            self.counters["opens_total:invalid"] += 1
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_STORE)

    async def unsubscribe_form(self, request: web.Request) -> web.Response:
        payload = self._payload(request.match_info["token"], "u")
        if payload is None:
            return self._not_found()
        page = _UNSUB_FORM.format(address=html.escape(str(payload.get("r") or "this address")))
        return web.Response(text=page, content_type="text/html", headers=NO_STORE)

    async def unsubscribe(self, request: web.Request) -> web.Response:
        payload = self._payload(request.match_info["token"], "u")
        if payload is None:
            return self._not_found()
        await request.read()  # "List-Unsubscribe=One-Click" (RFC 8058); any body is accepted
        if not await self._record(await self._event(EventType.UNSUBSCRIBED, payload, request), strict=True):
            return web.Response(status=503, text="Try again later", headers={"Retry-After": "60", **NO_STORE})
        page = _UNSUB_DONE.format(address=html.escape(str(payload.get("r") or "this address")))
        return web.Response(text=page, content_type="text/html", headers=NO_STORE)

    async def close(self, app: web.Application) -> None:
        """At shutdown: stop writing the backlog (what is still held is logged as lost)."""
        await self.backlog.close()
        self._lookups.shutdown(wait=False, cancel_futures=True)

    async def healthz(self, request: web.Request) -> web.Response:
        if not self.database_up():
            # still redirecting and counting: a load balancer must keep sending clicks here
            return web.Response(text=f"degraded: database unreachable, {len(self.backlog)} event(s) held\n")
        try:
            await asyncio.to_thread(self.store.counts_by_type)
        except Exception as exc:
            return web.Response(status=503, text=f"event store: {exc}\n")
        return web.Response(text="ok\n")

    async def metrics(self, request: web.Request) -> web.Response:
        if not self._admin_ok(request):
            return web.Response(status=403, text="forbidden\n")
        body, content_type = await asyncio.to_thread(render_metrics, self.counters, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _stats_args(self, request: web.Request) -> dict[str, Any]:
        q = request.query
        args: dict[str, Any] = {"campaign": q.get("campaign") or None}
        args["since"] = parse_date(q["since"]) if q.get("since") else None
        args["until"] = parse_date(q["until"], end=True) if q.get("until") else None
        return args

    async def api_stats(self, request: web.Request) -> web.Response:
        if not self._admin_ok(request):
            return web.json_response({"error": "forbidden"}, status=403)
        try:
            args = self._stats_args(request)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        report = await asyncio.to_thread(stats_report, self.store, **args)
        return web.json_response(report, headers=NO_STORE)

    async def stats_page(self, request: web.Request) -> web.Response:
        if not self._admin_ok(request):
            return web.Response(status=403, text="forbidden\n")
        try:
            args = self._stats_args(request)
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        report = await asyncio.to_thread(stats_report, self.store, **args)
        query = {k: request.query.get(k, "") for k in ("campaign", "since", "until")}
        return web.Response(text=render_stats_page(report, query), content_type="text/html", headers=NO_STORE)


def _count_requests(counters: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        name = request.match_info.route.name or "other"
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            counters[f"http_requests_total:{name}|{exc.status}"] += 1
            raise
        counters[f"http_requests_total:{name}|{resp.status}"] += 1
        return resp

    return middleware


def build_app(
    config: Config, events: EventSink, store: EventStore, metrics: Metrics, webhooks: Sequence[WebhookStats] = (),
    database_up: Callable[[], bool] = lambda: True,
) -> web.Application:
    """The tracking endpoints on their ports; config errors (bad regex, bad network) raise here.
    ``database_up``: whether the shared database is reachable (events go straight to the backlog if not)."""
    t = TrackingApp(config, events, store, metrics, webhooks, database_up)
    app = web.Application(middlewares=[_count_requests(metrics)], client_max_size=64 * 1024)
    app[BACKLOG] = t.backlog
    app.on_cleanup.append(t.close)
    app.router.add_get("/c/{token}", t.click, name="click")
    app.router.add_get("/o/{token}.gif", t.open, name="open")
    app.router.add_get("/u/{token}", t.unsubscribe_form, name="unsubscribe_form")
    app.router.add_post("/u/{token}", t.unsubscribe, name="unsubscribe")
    app.router.add_get("/healthz", t.healthz, name="healthz")
    app.router.add_get("/metrics", t.metrics, name="metrics")
    app.router.add_get("/api/stats", t.api_stats, name="api_stats")
    app.router.add_get("/stats", t.stats_page, name="stats")
    return app
