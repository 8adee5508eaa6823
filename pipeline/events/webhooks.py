"""Webhooks: every event, as JSON, to the URLs of its credential and the global ones.

Deliveries sit in the outbox table of the event store (written in the same transaction as the
event), so a crash or restart loses none: the sender picks up whatever is pending when it
starts. Delivery is at least once; receivers de-duplicate on ``X-Smtpgate-Event-Id``.

Each request carries ``X-Smtpgate-Timestamp`` (Unix seconds of this attempt) and
``X-Smtpgate-Signature: sha256=<hex>``, the HMAC-SHA256 of ``"{timestamp}.{body}"`` with the
webhook secret; a receiver recomputes it and refuses old timestamps, which stops replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from pipeline.config import Config
from pipeline.contract.vocabulary import EventType
from pipeline.events import webhook_formats as formats
from pipeline.events.metadata import message_meta
from pipeline.events.store import EventStoreBase, OutboxItem, StoredEvent
from pipeline.storage.generated import generated_secret

log = logging.getLogger("smtpgate.webhooks")

USER_AGENT = "smtpgate-webhooks/1"


def load_webhook_secret(config: Config) -> bytes:
    """The configured secret, or one generated once: ``<data_dir>/webhook.key`` (mode 0600), or the
    shared database's row with ``[storage] url`` (every node signs with the same secret)."""
    if config.webhooks.secret:
        return config.webhooks.secret.encode("utf-8")
    return generated_secret("webhook.key", config.data_dir, config.storage.url).encode("utf-8")


def log_url(url: str) -> str:
    """``url`` as a log line may show it: scheme and host only. Receivers often put their secret in
    the path or query (an unguessable URL), and logs travel further than the config file."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    host = parts.hostname or "?"
    rest = "..." if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}/{rest}"  # never user:password@ either


def sign_webhook(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``"{timestamp}.{body}"``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify_webhook(
    secret: bytes, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (no replays)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign_webhook(secret, timestamp, body), signature)


def webhook_payload(
    stored: StoredEvent, tags: Sequence[str] = (), metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON body: the event, its id, the letter id also as Sendsay's ``gate.uniq``, and the
    message's tags and metadata (vendor dialects)."""
    e = stored.event
    body: dict[str, Any] = {
        "id": stored.id,
        "event": e.type,
        "time": e.time,
        "queue_id": e.queue_id,
        "recipient": e.recipient,
        "credential": e.credential,
        "campaign_id": e.campaign_id,
        "letter_id": e.letter_id,
        "gate": {"uniq": e.letter_id},
        "machine": stored.machine,
        "data": e.data,
        "tags": list(tags),
        "metadata": dict(metadata or {}),
    }
    if e.url is not None:
        body["url"] = e.url
    if stored.bounce_class is not None:
        body["bounce_class"] = stored.bounce_class
    return body


def webhook_urls(
    config: Config,
    credential: str | None,
    lookup: Callable[[str], Iterable[str]] | None = None,
    event_type: str | None = None,
) -> list[str]:
    """Global URLs plus the credential's (from the config file, and ``lookup`` for stored ones),
    plus each ``[[webhooks.endpoints]]`` that wants this event type (and credential) in a format
    that has it. ``rejected`` (refusals) only to endpoints that list it in ``events``: receivers that
    never asked for refusals do not get them."""
    if event_type == EventType.REJECTED:
        return [e.url for e in config.webhooks.endpoints if event_type in e.events
                and (e.credential is None or e.credential == credential) and formats.supports(e.format, event_type)]
    urls = list(config.webhooks.urls)
    for endpoint in config.webhooks.endpoints:
        if endpoint.credential is not None and endpoint.credential != credential:
            continue
        if event_type is not None and (
            (endpoint.events and event_type not in endpoint.events) or not formats.supports(endpoint.format, event_type)
        ):
            continue
        urls.append(endpoint.url)
    if credential:
        for cred in config.credentials:
            if cred.name == credential:
                urls.extend(cred.webhooks)
        if lookup is not None:
            urls.extend(lookup(credential))
    return list(dict.fromkeys(urls))


class WebhookSender:
    """The service that drains the outbox: concurrent POSTs, exponential backoff, then ``dead``."""

    name = "webhooks"

    def __init__(self, store: EventStoreBase, config: Config) -> None:
        self.store = store
        self.cfg = config.webhooks
        self.secret = load_webhook_secret(config)
        self.keys: dict[str, Any] = {}  # endpoint URL -> its signing key (loaded at start: fail early)
        for endpoint in self.cfg.endpoints:
            if endpoint.format == "sendgrid":
                from pipeline.events.webhook_formats.sendgrid import load_key

                self.keys[endpoint.url] = load_key(config, endpoint)
            elif endpoint.format == "mailgun":
                self.keys[endpoint.url] = endpoint.signing_key.encode("utf-8") if endpoint.signing_key else self.secret
        # the signing secret of an endpoint added over the API, by (url, event credential); None: the global one
        self.endpoint_secret: Callable[[str, str | None], bytes | None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[int] = set()
        self._read_failing = False  # the outbox read fails (database away): logged once each way
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.failures = 0

    def wake(self) -> None:
        """A new delivery was queued: look now instead of at the next poll."""
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after ``attempts`` failed ones (doubling, capped)."""
        return float(min(self.cfg.retry_max, self.cfg.retry_min * 2 ** max(attempts - 1, 0)))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout), headers={"User-Agent": USER_AGENT}
        )
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self, grace: float) -> None:
        if self._task is not None:
            # In-flight POSTs are abandoned, not awaited: they are still pending in the outbox
            # and are sent again after the restart (at least once).
            self._task.cancel()
            # asyncio.wait, not wait_for: it returns at the deadline even if the task is slow to
            # finish cancelling (wait_for would wait for the cancellation to complete).
            await asyncio.wait({self._task}, timeout=max(grace, 1.0))
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                try:  # in a thread: a slow or absent database must not stall the event loop
                    items = await asyncio.to_thread(
                        self.store.due_webhooks, time.time(), self.cfg.concurrency * 4, tuple(self._inflight))
                    if self._read_failing:
                        self._read_failing = False
                        log.warning("webhook outbox readable again")
                except Exception as exc:  # a locked or broken DB must not kill the sender
                    if not self._read_failing:  # once per outage, not per poll
                        self._read_failing = True
                        log.error("webhook outbox read failed (retrying every poll, logged again when it works): %s",
                                  exc)
                    items = []
                for group in self._batches(items):
                    self._inflight.update(item.id for item in group)
                    task = asyncio.create_task(self._deliver(group, sem))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await self._sleep()
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)

    async def _sleep(self) -> None:
        delay = self.cfg.poll_interval
        with contextlib.suppress(Exception):
            nxt = await asyncio.to_thread(self.store.next_webhook_at)
            if nxt is not None:
                delay = min(delay, max(nxt - time.time(), 0.0))
        if delay <= 0 and self._inflight:
            delay = 0.05  # everything due is in flight: don't spin
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _batches(self, items: list[OutboxItem]) -> list[list[OutboxItem]]:
        """One delivery per item, except formats that post arrays (SendGrid): up to batch_size per URL."""
        groups: dict[Any, list[OutboxItem]] = {}
        out: list[list[OutboxItem]] = []
        for item in items:
            size = formats.batch_size(self.cfg.endpoint(item.url))
            if size == 1:
                out.append([item])
                continue
            group = groups.setdefault(item.url, [])
            group.append(item)
            if len(group) == size:
                out.append(groups.pop(item.url))
        return out + list(groups.values())

    async def _deliver(self, group: list[OutboxItem], sem: asyncio.Semaphore) -> None:
        try:
            async with sem:
                error = await self._post(group)
            for item in group:
                attempts = item.attempts + 1
                if error is None:
                    await asyncio.to_thread(self.store.webhook_delivered, item.id)
                    self.sent += 1
                    continue
                self.failures += 1
                give_up = attempts >= self.cfg.max_attempts
                nxt = None if give_up else time.time() + self.backoff(attempts)
                log.warning(
                    "webhook %s event %s attempt %d failed: %s%s",
                    log_url(item.url), item.event.id, attempts, error, " (giving up)" if give_up else "",
                )
                await asyncio.to_thread(self.store.webhook_failed, item.id, error, nxt)
        except Exception as exc:
            log.error("webhook %s: cannot record attempt: %s", [item.id for item in group], exc)
        finally:
            self._inflight.difference_update(item.id for item in group)
            self._wake.set()

    def _request(self, group: list[OutboxItem]) -> formats.Request:
        """The body, headers and auth of one POST in the endpoint's format."""
        meta = message_meta(self.store, [i.event.event.queue_id or "" for i in group])
        events = [
            formats.WebhookEvent(i.event, *meta.get(i.event.event.queue_id or "", ([], {}))) for i in group
        ]
        endpoint = self.cfg.endpoint(group[0].url)
        if endpoint is not None and endpoint.format != "smtpgate":
            return formats.render(endpoint, events, self.keys.get(endpoint.url))
        [item] = events
        payload = webhook_payload(item.stored, item.tags, item.metadata)
        body = json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Smtpgate-Event": item.stored.event.type,
            "X-Smtpgate-Event-Id": str(item.stored.id),
            "X-Smtpgate-Timestamp": ts,
            "X-Smtpgate-Signature": sign_webhook(self._secret(group[0].url, item.stored.event.credential), ts, body),
        }
        if item.stored.event.letter_id:
            headers["X-Letter-Id"] = item.stored.event.letter_id
        headers.update(formats.basic_auth(endpoint))
        return formats.Request(body, headers)

    def _secret(self, url: str, credential: str | None) -> bytes:
        """An API endpoint's own secret (its tenant can verify with it), else ``[webhooks] secret``."""
        if self.endpoint_secret is not None:
            own = self.endpoint_secret(url, credential)
            if own is not None:
                return own
        return self.secret

    async def _post(self, group: list[OutboxItem]) -> str | None:
        """One attempt; ``None`` on a 2xx answer, else what went wrong."""
        assert self._session is not None
        request = await asyncio.to_thread(self._request, group)  # a metadata look-up, a signature
        try:
            async with self._session.post(
                group[0].url, data=request.body, headers=request.headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
