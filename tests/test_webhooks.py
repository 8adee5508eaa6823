"""Webhooks (both storage backends): a real local receiver, signatures, retries with backoff, and a
gateway restart between attempts that loses nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from pipeline.app.gateway import Gateway
from pipeline.contract.context import Event
from pipeline.events.webhooks import sign_webhook, verify_webhook
from tests.support.tracking import tracking_config

SECRET = b"whsec-test"


@dataclass
class Receiver:
    """Answers ``statuses[i]`` to the i-th request (200 after the list runs out)."""

    statuses: list[int]
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        n = len(self.requests)
        status = self.statuses[n] if n < len(self.statuses) else 200
        self.requests.append((dict(request.headers), body, status))
        self.changed.set()
        return web.Response(status=status, text="ok" if status == 200 else "try later")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.requests) < n:
                self.changed.clear()
                await self.changed.wait()


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition (the outbox lives in SQLite) with a bounded timeout."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


@pytest.fixture
async def receiver():
    r = Receiver([500, 503])
    await r.start()
    yield r
    assert r.runner is not None
    await r.runner.cleanup()


async def start_gateway(config) -> Gateway:
    gw = Gateway(config)
    gw.services = gw.tracking_services(port=0)
    await gw.start()
    return gw


async def test_webhook_retried_across_a_restart_arrives_once_accepted_and_signed(backend, receiver):
    config = tracking_config(backend.data_dir, {**backend.overrides, "webhooks": {"urls": [receiver.url]}})
    gw1 = await start_gateway(config)
    await gw1.emit(Event("delivered", queue_id="Q1", recipient="ann@example.net", credential="shop",
                         campaign_id="spring", letter_id="L-77", data={"reply": "250 2.0.0 queued as X"}))
    await receiver.wait_for(1)
    await wait_until(lambda: gw1.events.webhook_deliveries()[0]["attempts"] == 1)
    await gw1.stop()  # restart between attempts: the pending delivery is only in events.db

    gw2 = await start_gateway(config)
    try:
        await receiver.wait_for(3)
        await wait_until(lambda: gw2.events.webhook_deliveries()[0]["state"] == "delivered")
        [delivery] = gw2.events.webhook_deliveries()
    finally:
        await gw2.stop()
    assert [status for _, _, status in receiver.requests] == [500, 503, 200]
    assert (delivery["state"], delivery["attempts"]) == ("delivered", 3)

    headers, body, _ = receiver.requests[-1]
    assert headers["X-Smtpgate-Signature"] == sign_webhook(SECRET, headers["X-Smtpgate-Timestamp"], body)
    assert verify_webhook(SECRET, headers["X-Smtpgate-Timestamp"], body, headers["X-Smtpgate-Signature"])
    assert not verify_webhook(SECRET, headers["X-Smtpgate-Timestamp"], body + b" ", headers["X-Smtpgate-Signature"])
    assert not verify_webhook(b"other", headers["X-Smtpgate-Timestamp"], body, headers["X-Smtpgate-Signature"])
    old = str(int(headers["X-Smtpgate-Timestamp"]) - 3600)  # a replayed request from an hour ago
    assert not verify_webhook(SECRET, old, body, sign_webhook(SECRET, old, body))
    payload = json.loads(body)
    assert payload["event"] == "delivered" and payload["campaign_id"] == "spring"
    assert payload["letter_id"] == "L-77" and payload["gate"]["uniq"] == "L-77"
    assert (payload["queue_id"], payload["recipient"], payload["credential"]) == ("Q1", "ann@example.net", "shop")
    assert headers["X-Letter-Id"] == "L-77" and headers["Content-Type"] == "application/json"
    assert {h["X-Smtpgate-Event-Id"] for h, _, _ in receiver.requests} == {str(payload["id"])}
    assert {b for _, b, _ in receiver.requests} == {body}  # every attempt carries the same event


async def test_credential_webhooks_get_only_their_credentials_events(backend, receiver):
    receiver.statuses = []
    other = Receiver([])
    await other.start()
    config = tracking_config(backend.data_dir, {**backend.overrides,
        "credentials": [{"name": "shop", "username": "shop", "secret": "pw-shop", "webhooks": [other.url]}],
        "webhooks": {"urls": [receiver.url]},
    })
    gw = await start_gateway(config)
    try:
        await gw.emit(Event("opened", queue_id="Q1", recipient="a@x.net", credential="shop"))
        await gw.emit(Event("opened", queue_id="Q2", recipient="b@x.net", credential="blog"))
        await receiver.wait_for(2)
        await other.wait_for(1)
        await wait_until(lambda: gw.events.webhook_counts() == {"delivered": 3})
    finally:
        await gw.stop()
        assert other.runner is not None
        await other.runner.cleanup()
    assert [json.loads(b)["queue_id"] for _, b, _ in other.requests] == ["Q1"]
    assert sorted(json.loads(b)["queue_id"] for _, b, _ in receiver.requests) == ["Q1", "Q2"]


async def test_webhook_gives_up_after_max_attempts_with_backoff(backend, receiver):
    receiver.statuses = [500] * 10
    config = tracking_config(backend.data_dir, {**backend.overrides,
        "webhooks": {"urls": [receiver.url], "max_attempts": 3, "retry_min": 0.05, "retry_max": 0.1},
    })
    gw = await start_gateway(config)
    try:
        await gw.emit(Event("bounced", queue_id="Q1", recipient="a@x.net", data={"status": "5.1.1"}))
        await wait_until(lambda: gw.events.webhook_counts() == {"dead": 1})
        [d] = gw.events.webhook_deliveries()
        assert d["attempts"] == 3 and d["last_error"] == "HTTP 500"
        sender = gw.services[1]
        assert sender.backoff(1) == 0.05 and sender.backoff(2) == 0.1 and sender.backoff(10) == 0.1
    finally:
        await gw.stop()
    assert len(receiver.requests) == 3


async def test_unreachable_webhook_url_is_retried_not_lost(backend):
    config = tracking_config(backend.data_dir, {**backend.overrides, "webhooks": {"urls": ["http://127.0.0.1:9/hook"], "retry_min": 30}})
    gw = await start_gateway(config)
    try:
        await gw.emit(Event("clicked", queue_id="Q1", recipient="a@x.net", url="https://x.example/"))
        await wait_until(lambda: gw.events.webhook_deliveries()[0]["attempts"] == 1)
        [d] = gw.events.webhook_deliveries()
        assert d["state"] == "pending" and "Connect" in d["last_error"]
    finally:
        await gw.stop()


async def test_stored_credential_webhooks_from_credentials_db(backend, receiver):
    from pipeline.accounts.store import open_credential_store

    receiver.statuses = []
    config = tracking_config(backend.data_dir, backend.overrides)
    store = open_credential_store(config)  # credentials.db, or the shared PostgreSQL
    store.add("api-app", "apikey", options={"webhooks": [receiver.url]})
    store.close()
    gw = await start_gateway(config)
    try:
        await gw.emit(Event("delivered", queue_id="Q1", recipient="a@x.net", credential="api-app", letter_id="L1"))
        await gw.emit(Event("delivered", queue_id="Q2", recipient="b@x.net", credential="someone-else"))
        await receiver.wait_for(1)
        await wait_until(lambda: gw.events.webhook_counts() == {"delivered": 1})
    finally:
        await gw.stop()
    assert [json.loads(b)["letter_id"] for _, b, _ in receiver.requests] == ["L1"]
