"""Source IP pools on loopback: the fake MX sees the address (and HELO) the pool chose, per
credential and per campaign; warm-up caps postpone without using an attempt."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_config
from pipeline.config import ConfigError, PoolAddress, parse_config
from pipeline.contract.context import Credential, MessageContext
from pipeline.contract.message import Message
from pipeline.egress.base import Copy
from pipeline.egress.mx import MxEgress, build_mx_shared, dns_resolver
from pipeline.egress.pools import SourcePools, daily_cap
from pipeline.egress.state import EgressState
from tests.support.egress_net import FakeMx, ZoneServer, free_port_on
from tests.support.smtp_sink import FAST_RETRIES, EventRecorder

RAW = b"From: app@example.org\r\nTo: someone@example.net\r\nSubject: test\r\n\r\nHello\r\n"
POOLS = {
    "a": {"addresses": [{"address": "127.0.0.2", "helo": "mta-a.gw.test"}]},
    "b": {"addresses": [{"address": "127.0.0.3", "helo": "mta-b.gw.test"}]},
}


@pytest.fixture
async def zone():
    z = await ZoneServer().start()
    z.add("pool.test", "MX", "10 mx.pool.test.")
    z.add("mx.pool.test", "A", "127.0.0.1")
    yield z
    z.close()


@pytest.fixture
def mx():
    port = free_port_on("127.0.0.1")
    server = FakeMx("127.0.0.1", port)
    server.start()
    yield server, port
    server.stop()


@pytest.fixture(autouse=True)
def _events():
    EventRecorder.reset()
    yield
    EventRecorder.reset()


async def test_the_fake_mx_sees_the_source_address_and_helo_the_pool_chose(zone, mx, data_dir):
    server, port = mx
    config = make_config({
        "gateway": {"data_dir": str(data_dir), "hostname": "gw.test"},
        "spool": {**FAST_RETRIES, "bounce_notices": False},
        "egress": {"type": "mx", "mx_port": port, "timeout": 5},
        "dns": zone.dns_config(),
        "pools": POOLS,
        "pool_selection": {"credentials": {"app": "a"}, "campaigns": {"promo": "b"}},
    })
    gw = Gateway(config, extra_plugins=[EventRecorder])
    svc = gw.delivery_service(workers=0)
    await svc.start()
    try:
        for rcpt, credential, campaign in (("by-credential@pool.test", "app", None),
                                           ("by-campaign@pool.test", "app", "promo"),
                                           ("no-pool@pool.test", None, None)):
            ctx = MessageContext(message=Message(RAW, "app@example.org", [rcpt]),
                                 credential=Credential(credential) if credential else None, campaign_id=campaign)
            await gw.spool.enqueue(ctx, RAW, [rcpt])
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 3)
    finally:
        await svc.stop(5.0)
        gw.spool.close()
    seen = {m["rcpt"]: (m["peer"], m["helo"]) for m in server.log.messages}
    assert seen["by-credential@pool.test"] == ("127.0.0.2", "mta-a.gw.test")
    assert seen["by-campaign@pool.test"] == ("127.0.0.3", "mta-b.gw.test")  # the campaign's pool wins
    assert seen["no-pool@pool.test"] == ("127.0.0.1", "gw.test")  # no pool: the system's address, as before
    sources = {e.recipient: e.data.get("source") for e in EventRecorder.of("delivered")}
    assert sources == {"by-credential@pool.test": "127.0.0.2", "by-campaign@pool.test": "127.0.0.3",
                       "no-pool@pool.test": None}  # events say which address a result belongs to


async def test_a_warm_up_cap_postpones_the_rest_of_the_day_without_an_attempt(zone, mx, tmp_path):
    server, port = mx
    today = datetime.date.today()
    config = parse_config({
        "gateway": {"data_dir": str(tmp_path), "hostname": "gw.test"},
        "egress": {"type": "mx", "mx_port": port, "timeout": 5},
        "dns": zone.dns_config(),
        "pools": {"new": {"addresses": [{"address": "127.0.0.2", "warmup": [2, 50], "warmup_start": str(today)}]}},
    })
    resolver = dns_resolver(config, 5)
    state = EgressState(tmp_path / "egress.db")
    egress = MxEgress(config.egress, "gw.test", resolver=resolver, shared=build_mx_shared(config, resolver, None, state))
    copies = [Copy(f"Q{i}", f"u{i}@pool.test", "a@example.org", RAW, pool="new") for i in range(3)]
    results = [(await egress.deliver([c]))[0] for c in copies]
    await egress.shared.close()
    assert [r.status for r in results] == ["sent", "sent", "deferred"]
    held = results[2]
    assert held.postponed and "daily cap" in held.reply
    midnight = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time()).timestamp()
    assert held.retry_at == midnight
    assert [m["peer"] for m in server.log.messages] == ["127.0.0.2", "127.0.0.2"]
    # The count is durable: a restarted process still knows today's two.
    assert SourcePools(config, "gw.test", state).sent_today("127.0.0.2") == 2
    state.close()


def test_warm_up_schedule_grows_daily_within_the_daily_cap():
    start = datetime.date(2026, 12, 1)
    address = PoolAddress(address="192.0.2.1", warmup=[50, 100, 500], warmup_start=start, daily_cap=300)
    caps = [daily_cap(address, start + datetime.timedelta(days=d)) for d in range(5)]
    assert caps == [50, 100, 300, 300, 300]
    assert daily_cap(PoolAddress(address="192.0.2.1"), start) is None


def test_selecting_a_pool_that_does_not_exist_names_the_key_and_file():
    with pytest.raises(ConfigError) as exc:
        parse_config({"pools": POOLS, "pool_selection": {"campaigns": {"promo": "c"}}}, "smtpgate.toml")
    assert "smtpgate.toml" in str(exc.value) and "pool_selection.campaigns.promo" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config({"pools": {"x": {"addresses": [{"address": "mta1"}]}}}, "smtpgate.toml")
    assert "pools.x.addresses[0].address" in str(exc.value) and "not an IP address" in str(exc.value)


def test_pool_addresses_are_round_robin(tmp_path: Path):
    config = parse_config({"pools": {"p": {"addresses": [{"address": "127.0.0.2"}, {"address": "127.0.0.3"}]}}})
    pools = SourcePools(config, "gw.test")
    chosen = [pools.choose("p")[0] for _ in range(4)]
    assert [s.address for s in chosen if s] == ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]
