"""PostgreSQL away and back (issue 11 point 5), against a real cluster: connections refused and the
open ones killed, as in a restart. Tracking keeps redirecting and writes the held events once, in
order; delivery pauses and records every result once; the stoplist look-up at RCPT fails closed;
``/metrics`` shows the database down, then up."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from pipeline.app.gateway import Gateway
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from tests.support.smtp_sink import FAST_RETRIES, SinkController, SinkHandler, smtp_egress
from tests.support.tracking import rcpt_reply, signer, tracking_config
from tests.support.waiting import wait_for

RAW = b"From: app@example.org\r\nTo: someone@example.net\r\nSubject: outage\r\n\r\nHello\r\n"


class Outage:
    """The database refusing connections, with the open ones killed (what a restart looks like)."""

    def __init__(self, cluster: Any, url: str) -> None:
        self.cluster, self.db = cluster, url.rsplit("/", 1)[1]

    def start(self) -> None:
        self.cluster.admin(f"ALTER DATABASE {self.db} ALLOW_CONNECTIONS false")
        self.cluster.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.db}'")

    def end(self) -> None:
        self.cluster.admin(f"ALTER DATABASE {self.db} ALLOW_CONNECTIONS true")


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql.encode()).fetchall()]


async def metrics_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as r:
        assert r.status == 200
        return await r.text()


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_tracking_redirects_during_an_outage_and_writes_held_events_once_in_order(tmp_path, pg_url, pg_cluster):
    gw = Gateway(tracking_config(tmp_path / "data", {"storage": {"url": pg_url}}))
    tracking = gw.tracking_service(port=0)
    gw.services = [tracking]
    await gw.start()
    outage = Outage(pg_cluster, pg_url)
    s = signer()
    clicks = [s.sign({"k": "c", "q": "Q1", "r": "a@example.net", "u": f"https://shop.example/{i}"}) for i in range(3)]
    opened = s.sign({"k": "o", "q": "Q1", "r": "a@example.net"})
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{tracking.url}/c/{clicks[0]}", allow_redirects=False) as r:
                assert r.status == 302
            outage.start()
            try:
                async with http.get(f"{tracking.url}/c/{clicks[1]}", allow_redirects=False) as r:
                    assert r.status == 302 and r.headers["Location"] == "https://shop.example/1"
                async with http.get(f"{tracking.url}/o/{opened}.gif") as r:
                    assert r.status == 200 and (await r.read()).startswith(b"GIF89a")
                async with http.get(f"{tracking.url}/c/{clicks[2]}", allow_redirects=False) as r:
                    assert r.status == 302 and r.headers["Location"] == "https://shop.example/2"
                assert tracking.backlog == 3
                text = await metrics_text(http, tracking.url)
                assert metric(text, 'smtpgate_event_backlog_events{source="tracking"}') == 3
                assert metric(text, "smtpgate_db_up") == 0
                async with http.get(f"{tracking.url}/healthz") as r:  # still answering clicks: keep it in rotation
                    assert r.status == 200 and "degraded" in await r.text()
            finally:
                outage.end()
            await wait_for(lambda: tracking.backlog == 0, timeout=60)
            text = await metrics_text(http, tracking.url)
            assert metric(text, "smtpgate_db_up") == 1
            assert 'smtpgate_event_backlog_total{result="written",source="tracking"} 3.0' in text
            assert 'smtpgate_db_pool_connections{pool="events",state="max"}' in text
            assert metric(text, 'smtpgate_db_errors_total{op="event_write"}') or metric(text, 'smtpgate_db_errors_total{op="lookup"}')
            assert 'smtpgate_db_operation_seconds_count{op="event_write"}' in text
    finally:
        await gw.stop()
    stored = rows(pg_url, "SELECT type, url FROM events ORDER BY id")
    assert stored == [
        ("clicked", "https://shop.example/0"),
        ("clicked", "https://shop.example/1"),
        ("opened", None),
        ("clicked", "https://shop.example/2"),
    ]


class GatedSink(SinkHandler):
    """A sink that holds each DATA until ``gate`` opens: copies are in the egress when the database goes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.cond:
            self.waiting += 1
            self.cond.notify_all()
        await asyncio.to_thread(self.gate.wait, 60)
        return await super().handle_DATA(server, session, envelope)


async def test_delivery_pauses_during_an_outage_and_records_each_result_once(tmp_path, pg_url, pg_cluster):
    handler = GatedSink()
    controller = SinkController(handler, data_size_limit=0)
    controller.start()
    overrides = {"storage": {"url": pg_url}, "spool": {**FAST_RETRIES, "bounce_notices": False, "max_in_flight": 6},
                 "egress": smtp_egress(controller.port)}
    gw = Gateway(tracking_config(tmp_path / "data", overrides))
    delivery = gw.delivery_service(workers=0)
    gw.services = [delivery]
    await gw.start()
    outage = Outage(pg_cluster, pg_url)
    rcpts = [f"user{i}@example.net" for i in range(8)]

    async def enqueue(batch: list[str]) -> None:
        for r in batch:
            await gw.spool.enqueue(MessageContext(message=Message(RAW, "app@example.org", [r])), RAW, [r])

    try:
        await enqueue(rcpts[:4])
        # four copies in the sink's hands; room for two more, so the scheduler keeps claiming
        assert await asyncio.to_thread(handler.wait_for, lambda: handler.waiting >= 4, 30)
        outage.start()
        try:
            handler.gate.set()  # the next hop accepts: the results cannot be committed now
            await wait_for(lambda: delivery._results.failures > 0 and delivery._claims.failures > 0, timeout=60)
            assert gw.database is not None and not gw.database.up
            assert delivery._runner is not None and not delivery._runner.done()
        finally:
            outage.end()
        await enqueue(rcpts[4:])  # as the ingress does once the database is back
        assert await asyncio.to_thread(handler.wait_for, lambda: len(handler.messages) >= 8, 60)
        await wait_for(lambda: rows(pg_url, "SELECT COUNT(*) FROM messages") == [(0,)], timeout=60)
        await wait_for(lambda: len(rows(pg_url, "SELECT 1 FROM events WHERE type = 'delivered'")) >= 8, timeout=60)
        await wait_for(lambda: delivery._results.failures == 0 and delivery._claims.failures == 0, timeout=60)
    finally:
        await gw.stop()
        controller.stop()
    assert sorted(m.rcpt_tos[0] for m in handler.messages) == rcpts  # each delivered once
    delivered = rows(pg_url, "SELECT recipient, COUNT(*) FROM events WHERE type = 'delivered' GROUP BY recipient")
    assert sorted(delivered) == [(r, 1) for r in rcpts]  # one event each


async def test_stoplist_lookup_fails_closed_during_an_outage_then_answers_again(tmp_path: Path, pg_url, pg_cluster):
    config = tracking_config(tmp_path / "data", {
        "storage": {"url": pg_url},
        "listeners": [{"name": "plain", "port": 0, "tls": "none", "require_tls": False}],
        "credentials": [{"name": "shop", "username": "shop", "secret": "pw-shop"}],
    }, plugins=["suppression"])
    gw = Gateway(config)
    ingress = gw.ingress_service()
    gw.services = [ingress]
    await gw.start()
    outage = Outage(pg_cluster, pg_url)
    try:
        gw.events.suppress("blocked@example.net")
        port = ingress.port("plain")
        assert await rcpt_reply(port, "shop", "pw-shop", "blocked@example.net") == "550 5.0.0 Email is in the account stoplist"
        outage.start()
        try:
            assert (await rcpt_reply(port, "shop", "pw-shop", "someone@example.net")).startswith("451 4.3.0")
            assert (await rcpt_reply(port, "shop", "pw-shop", "blocked@example.net")).startswith("451 4.3.0")
        finally:
            outage.end()
        replies: list[str] = []

        async def answered() -> bool:
            replies.append(await rcpt_reply(port, "shop", "pw-shop", "blocked@example.net"))
            return replies[-1].startswith("550")

        deadline = time.monotonic() + 60
        while not await answered():  # as a client retries a 451
            assert time.monotonic() < deadline, replies
            await asyncio.sleep(0.2)
        assert (await rcpt_reply(port, "shop", "pw-shop", "someone@example.net")).startswith("250")
    finally:
        await gw.stop()


async def test_an_event_written_during_an_outage_is_held_and_stored_once_with_on_event_once(tmp_path, pg_url, pg_cluster):
    """An ``accepted`` event follows its message's COMMIT in a write of its own: if the database goes
    in between, the event waits in memory and is stored when it is back (before, it was logged and lost)."""
    from pipeline import Plugin, hookimpl
    from pipeline.contract.context import Event

    seen: list[str] = []

    class Listener(Plugin):
        name = "listener"

        @hookimpl
        def on_event(self, event: Event) -> None:
            seen.append(event.type)

    gw = Gateway(tracking_config(tmp_path / "data", {"storage": {"url": pg_url}}), extra_plugins=[Listener])
    outage = Outage(pg_cluster, pg_url)
    try:
        await gw.emit(Event("accepted", queue_id="Q0", recipient="a@example.net"))  # the pool is warm
        outage.start()
        try:
            await gw.emit(Event("accepted", queue_id="Q1", recipient="b@example.net"))  # not raised
            backlog = gw.event_sink.backlog
            assert backlog is not None and len(backlog) == 1 and seen == ["accepted"]
        finally:
            outage.end()
        await wait_for(lambda: len(backlog) == 0, timeout=60)
        assert seen == ["accepted", "accepted"]  # the plugins see it once, when it is stored
        assert gw.counters["event_store_errors_total"] == 0
    finally:
        await gw.stop()
    assert rows(pg_url, "SELECT queue_id FROM events ORDER BY id") == [("Q0",), ("Q1",)]


def test_only_connection_failures_count_as_the_database_being_away():
    """A deadlock or a cancelled statement must not log an outage or hold events: the database is there."""
    from psycopg import errors
    from psycopg_pool import PoolTimeout

    from pipeline.storage.health import unreachable

    away = [PoolTimeout("no connection"), errors.AdminShutdown("terminated"), psycopg.OperationalError("socket gone"),
            psycopg.InterfaceError("connection closed"), errors.TooManyConnections("full")]
    there = [errors.DeadlockDetected("deadlock"), errors.SerializationFailure("retry"),
             errors.QueryCanceled("statement timeout"), errors.UniqueViolation("dup"), ValueError("bug")]
    assert [unreachable(e) for e in away] == [True] * len(away)
    assert [unreachable(e) for e in there] == [False] * len(there)
