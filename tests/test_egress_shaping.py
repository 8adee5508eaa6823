"""Traffic shaping on loopback: connection and per-connection limits seen by a fake MX, rates,
throttling replies that suspend one destination while another keeps flowing, fair claiming,
``queue list`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.app.cli import main
from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_config
from pipeline.config import ShapingSection, parse_config
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.egress.base import Copy
from pipeline.egress.mx import MxEgress, build_mx_shared, dns_resolver
from pipeline.egress.shaping import Shaper
from pipeline.spool.sqlite import SqliteSpool
from pipeline.tracking.metrics import render_metrics
from tests.support.egress_net import FakeMx, ZoneServer, free_port_on
from tests.support.smtp_sink import FAST_RETRIES, EventRecorder

RAW = b"From: app@example.org\r\nTo: someone@example.net\r\nSubject: test\r\n\r\nHello\r\n"


@pytest.fixture
async def zone():
    z = await ZoneServer().start()
    for name, address in (("busy", "127.0.0.2"), ("calm", "127.0.0.3"), ("slow", "127.0.0.2")):
        z.add(f"{name}.test", "MX", f"10 mx.{name}.test.")
        z.add(f"mx.{name}.test", "A", address)
    yield z
    z.close()


@pytest.fixture
def mxes():
    started: list[FakeMx] = []

    def make(address: str, port: int, **kw: Any) -> FakeMx:
        mx = FakeMx(address, port, **kw)
        mx.start()
        started.append(mx)
        return mx

    yield make
    for mx in started:
        mx.stop()


def egress_for(zone: ZoneServer, port: int, tmp: Path, shaping: dict[str, Any]) -> MxEgress:
    config = parse_config({"gateway": {"data_dir": str(tmp), "hostname": "gw.test"},
                           "egress": {"type": "mx", "mx_port": port, "timeout": 5},
                           "dns": zone.dns_config(), "shaping": shaping})
    resolver = dns_resolver(config, 5)
    return MxEgress(config.egress, "gw.test", resolver=resolver, shared=build_mx_shared(config, resolver))


def copies(domain: str, n: int) -> list[Copy]:
    return [Copy(f"Q{i}", f"user{i}@{domain}", "a@example.org", RAW) for i in range(n)]


async def test_a_destination_limited_to_two_connections_never_sees_a_third(zone, mxes, tmp_path):
    port = free_port_on("127.0.0.2")
    mx = mxes("127.0.0.2", port, data_delay=0.1)
    egress = egress_for(zone, port, tmp_path, {"sites": {"slow": {"domains": ["slow.test"], "connections": 2}}})
    results = await egress.deliver(copies("slow.test", 8))
    await egress.shared.close()
    assert [r.status for r in results] == ["sent"] * 8
    assert mx.log.max_open == 2  # used both, never a third
    assert mx.log.connections == 2
    assert egress.shared.metrics["egress_connections_total:slow"] == 2


async def test_messages_per_connection_opens_a_new_connection_after_the_limit(zone, mxes, tmp_path):
    port = free_port_on("127.0.0.2")
    mx = mxes("127.0.0.2", port)
    egress = egress_for(zone, port, tmp_path, {"sites": {"slow": {"domains": ["slow.test"], "connections": 1,
                                                                  "messages_per_connection": 2}}})
    results = await egress.deliver(copies("slow.test", 5))
    await egress.shared.close()
    assert [r.status for r in results] == ["sent"] * 5
    assert mx.log.connections == 3 and mx.log.max_open == 1


async def test_per_minute_rate_postpones_the_rest_without_an_attempt(zone, mxes, tmp_path):
    port = free_port_on("127.0.0.2")
    mx = mxes("127.0.0.2", port)
    egress = egress_for(zone, port, tmp_path, {"sites": {"slow": {"domains": ["slow.test"], "per_minute": 2}}})
    before = time.time()
    results = await egress.deliver(copies("slow.test", 3))
    await egress.shared.close()
    assert sorted(r.status for r in results) == ["deferred", "sent", "sent"]
    [held] = [r for r in results if r.status == "deferred"]
    assert held.postponed and "rate limit" in held.reply
    assert held.retry_at is not None and before + 55 < held.retry_at < time.time() + 61
    assert len(mx.log.messages) == 2


def test_sites_match_by_recipient_domain_or_mx_suffix_and_throttle_texts_are_recognised():
    shaper = Shaper(ShapingSection(sites={"corp": {"domains": ["corp.example"], "connections": 3}}))
    google = shaper.site_for("gmail.com", ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"])
    hosted = shaper.site_for("hosted.example", ["aspmx.l.google.com"])
    assert google.name == hosted.name == "google" and google.connections == 5
    assert shaper.site_for("corp.example", ["mx.corp.example"]).connections == 3
    other = shaper.site_for("small.example", ["mx.small.example"])
    assert shaper.label(other) == "other" and other.connections == 10
    yahoo = shaper.site_for("yahoo.com", ["mta5.am0.yahoodns.net"])
    assert shaper.is_throttle(yahoo, 421, "4.7.0", "421 4.7.0 [TSS04] Messages temporarily deferred")
    assert shaper.is_throttle(google, 450, "4.7.28", "450 4.7.28 unusual rate of unsolicited mail")
    assert shaper.is_throttle(yahoo, 451, "4.0.0", "451 Message temporarily deferred [TS04]")
    assert not shaper.is_throttle(google, 450, "4.2.1", "450 4.2.1 The user is receiving mail too quickly")
    assert not shaper.is_throttle(google, 550, "5.7.1", "550 5.7.1 blocked")
    assert not Shaper(ShapingSection(enabled=False)).is_throttle(google, 421, "4.7.0", "421 4.7.0 slow down")


def test_claim_skips_held_destinations_and_takes_the_next_messages(tmp_path):
    spool = SqliteSpool(tmp_path / "spool.db")

    async def fill() -> list[str]:
        ids = []
        for rcpt in ["a@held.test", "b@held.test", "c@held.test", "d@free.test"]:
            ctx = MessageContext(message=Message(RAW, "app@example.org", [rcpt]))
            await spool.enqueue(ctx, RAW, [rcpt])
            ids.append(ctx.queue_id)
        return ids

    ids = asyncio.run(fill())
    [claimed] = spool.claim(1, 60.0, hold=frozenset({"held.test"}))
    assert claimed.queue_id == ids[3] and claimed.recipients == ["d@free.test"]
    assert spool.next_due(hold=frozenset({"held.test"})) is None
    assert spool.next_due() is not None
    assert len(spool.claim(10, 60.0)) == 3  # nothing held: the rest is claimed
    spool.close()


@pytest.fixture(autouse=True)
def _events():
    EventRecorder.reset()
    yield
    EventRecorder.reset()


async def test_a_421_from_one_destination_pauses_it_while_another_keeps_flowing(zone, mxes, data_dir):
    port = free_port_on("127.0.0.2", "127.0.0.3")
    busy = mxes("127.0.0.2", port, rcpt_reply="421 4.7.0 Too many messages from your IP, try again later")
    calm = mxes("127.0.0.3", port)
    config = make_config({
        "gateway": {"data_dir": str(data_dir), "hostname": "gw.test"},
        "spool": {**FAST_RETRIES, "lifetime": 3600.0, "bounce_notices": False},
        "egress": {"type": "mx", "mx_port": port, "timeout": 5},
        "dns": zone.dns_config(),
        "shaping": {"sites": {"busy": {"domains": ["busy.test"], "connections": 1, "backoff": 600}}},
    })
    gw = Gateway(config, extra_plugins=[EventRecorder])
    svc = gw.delivery_service(workers=0)
    await svc.start()
    try:
        for i in range(3):
            for domain in ("busy.test", "calm.test"):
                rcpt = f"user{i}@{domain}"
                ctx = MessageContext(message=Message(RAW, "app@example.org", [rcpt]))
                await gw.spool.enqueue(ctx, RAW, [rcpt])
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 3 and EventRecorder.of("deferred"))
        # The destination is suspended: a new message to it is not even claimed; calm still flows.
        for rcpt in ("late@busy.test", "late@calm.test"):
            ctx = MessageContext(message=Message(RAW, "app@example.org", [rcpt]))
            await gw.spool.enqueue(ctx, RAW, [rcpt])
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 4)
        assert "busy.test" in svc.router.held_domains()
        queue_list = await asyncio.to_thread(CliRunner().invoke, main, ["queue", "list"])
        metrics = render_metrics(gw.counters)[0].decode()
    finally:
        await svc.stop(5.0)
        gw.spool.close()
    assert len(busy.log.rcpts) == 1  # one attempt hit the 421; the others never went out
    assert sorted(m["rcpt"] for m in calm.log.messages) == sorted([f"user{i}@calm.test" for i in range(3)]
                                                                  + ["late@calm.test"])
    [attempted] = [e for e in EventRecorder.of("deferred") if e.data["attempts"] == 1]
    assert attempted.recipient == busy.log.rcpts[0]
    assert attempted.data["next_attempt"] > time.time() + 500  # the site's backoff, not retry_min
    rows = {r["recipient"]: r for r in SqliteSpool(data_dir / "spool.db").list_recipients()}
    assert set(rows) == {f"user{i}@busy.test" for i in range(3)} | {"late@busy.test"}
    for rcpt, row in rows.items():
        if rcpt != attempted.recipient:
            # Held back (never claimed, or postponed once claimed): no attempt used, due when the site reopens.
            assert row["attempts"] == 0 and row["state"] in ("queued", "deferred"), row
            assert row["state"] == "queued" or row["next_attempt"] > time.time() + 500
    assert queue_list.exit_code == 0, queue_list.output
    assert "Suspended destinations" in queue_list.output
    assert "busy until" in queue_list.output and "421 4.7.0 Too many messages" in queue_list.output
    assert 'smtpgate_egress_suspensions_total{site="busy"} 1.0' in metrics
    assert 'smtpgate_egress_connections_total{site="other"}' in metrics  # calm.test: not a named site
