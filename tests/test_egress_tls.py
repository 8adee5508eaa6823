"""Outbound TLS policy on loopback: MTA-STS (enforce, testing, caching), DANE (3 1 1, 2 1 1,
mismatch, no AD bit), configured levels, and the TLS outcome on every result.

A local authoritative DNS server serves the test zone, a local HTTPS server with a test CA serves
the MTA-STS policies, and fake MX servers listen on 127.0.0.2-4 (one shared port).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import parse_config
from pipeline.egress.base import Copy
from pipeline.egress.mx import MxEgress, build_mx_shared, dns_resolver
from pipeline.egress.state import EgressState
from tests.support.egress_net import (
    FakeMx,
    PolicyServer,
    TestCA,
    ZoneServer,
    free_port_on,
    server_context,
    spki_sha256,
)

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
GOOD, BAD, PLAIN = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "version: STSv1\r\nmode: " + mode + "\r\n" + "".join(f"mx: {m}\r\n" for m in mx) + f"max_age: {max_age}\r\n"


class Net:
    """The loopback internet of these tests."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = TestCA(tmp / "ca")
        self.other_ca = TestCA(tmp / "other-ca", "someone else's CA")
        self.zone = ZoneServer()
        cert, key, _ = self.ca.issue(*(f"mta-sts.{d}" for d in ("good.test", "unlisted.test", "badcert.test",
                                                                "testing.test", "rotating.test", "testing2.test")),
                                     "reports.good.test")
        self.https = PolicyServer(server_context(cert, key))
        self.port = free_port_on(GOOD, BAD, PLAIN)
        cert, key, self.leaf = self.ca.issue("mx.good.test", "mx.dane.test", "mx.danebad.test", "mx.danetal.test",
                                             "mx.insecure.test")
        self.good = FakeMx(GOOD, self.port, tls=server_context(cert, key))
        cert, key, _ = self.other_ca.issue("mx.bad.test")
        self.bad = FakeMx(BAD, self.port, tls=server_context(cert, key))
        self.plain = FakeMx(PLAIN, self.port)
        self.egresses: list[MxEgress] = []
        self.states: list[EgressState] = []

    async def start(self) -> Net:
        await self.zone.start()
        await self.https.start()
        for mx in (self.good, self.bad, self.plain):
            mx.start()
        z = self.zone
        z.add("mx.good.test", "A", GOOD)
        z.add("mx.bad.test", "A", BAD)
        z.add("mx.plain.test", "A", PLAIN)
        for name in ("good", "unlisted", "badcert", "testing", "rotating"):
            z.add(f"mta-sts.{name}.test", "A", "127.0.0.1")
        z.add("good.test", "MX", "10 mx.good.test.")
        z.add("_mta-sts.good.test", "TXT", '"v=STSv1; id=20261202T1;"')
        self.https.policies["good.test"] = policy("enforce", "*.good.test")
        z.add("unlisted.test", "MX", "10 mx.good.test.")
        z.add("_mta-sts.unlisted.test", "TXT", '"v=STSv1; id=1;"')
        self.https.policies["unlisted.test"] = policy("enforce", "mx.elsewhere.test")
        z.add("badcert.test", "MX", "10 mx.bad.test.")
        z.add("_mta-sts.badcert.test", "TXT", '"v=STSv1; id=1;"')
        self.https.policies["badcert.test"] = policy("enforce", "mx.bad.test")
        z.add("testing.test", "MX", "10 mx.bad.test.")
        z.add("_mta-sts.testing.test", "TXT", '"v=STSv1; id=1;"')
        self.https.policies["testing.test"] = policy("testing", "mx.bad.test")
        z.add("mta-sts.testing2.test", "A", "127.0.0.1")
        z.add("testing2.test", "MX", "10 mx.good.test.")
        z.add("_mta-sts.testing2.test", "TXT", '"v=STSv1; id=1;"')
        self.https.policies["testing2.test"] = policy("testing", "mx.elsewhere.test")
        z.add("plain.test", "MX", "10 mx.good.test.")
        z.add("cleartext.test", "MX", "10 mx.plain.test.")
        z.add("badverify.test", "MX", "10 mx.bad.test.")
        # DANE: the answers for these names carry the AD bit (a validating resolver's verdict).
        port = self.port
        for name, tlsa in (("dane", f"3 1 1 {spki_sha256(self.leaf)}"), ("danebad", "3 1 1 " + "ab" * 32),
                           ("danetal", f"2 1 1 {spki_sha256(self.ca.cert)}")):
            z.add(f"{name}.test", "MX", f"10 mx.{name}.test.", secure=True)
            z.add(f"mx.{name}.test", "A", GOOD, secure=True)
            z.add(f"_{port}._tcp.mx.{name}.test", "TLSA", tlsa, secure=True)
        z.add("insecure.test", "MX", "10 mx.insecure.test.")
        z.add("mx.insecure.test", "A", GOOD)
        z.add(f"_{port}._tcp.mx.insecure.test", "TLSA", "3 1 1 " + "cd" * 32)  # no AD bit: not DNSSEC-secure
        return self

    def egress(self, validating: bool = False, **tls_policy: Any) -> MxEgress:
        config = parse_config({
            "gateway": {"data_dir": str(self.tmp / "data"), "hostname": "gw.test"},
            "egress": {"type": "mx", "mx_port": self.port, "timeout": 5},
            "dns": self.zone.dns_config(validating),
            "tls_policy": {"ca_file": str(self.ca.ca_file), "mta_sts_port": self.https.port, **tls_policy},
        })
        resolver = dns_resolver(config, 5)
        state = EgressState(config.data_dir / "egress.db")
        self.states.append(state)
        egress = MxEgress(config.egress, "gw.test", resolver=resolver, shared=build_mx_shared(config, resolver, None, state))
        self.egresses.append(egress)
        return egress

    async def close(self) -> None:
        for egress in self.egresses:
            await egress.shared.close()
        for state in self.states:
            state.close()
        for mx in (self.good, self.bad, self.plain):
            mx.stop()
        await self.https.close()
        self.zone.close()


@pytest.fixture
async def net(tmp_path: Path):
    n = await Net(tmp_path).start()
    yield n
    await n.close()


async def send(egress: MxEgress, rcpt: str) -> Any:
    [result] = await egress.deliver([Copy("Q1", rcpt, "a@example.org", MSG)])
    return result


async def test_mta_sts_enforce_delivers_over_verified_tls_to_a_listed_mx(net):
    res = await send(net.egress(), "jane@good.test")
    assert res.status == "sent", res
    assert res.tls == "TLSv1.3 verified (mta-sts)"
    assert net.good.log.messages[0]["tls"] is True


async def test_mta_sts_enforce_refuses_an_mx_not_in_the_policy(net):
    egress = net.egress()
    res = await send(egress, "jane@unlisted.test")
    assert (res.status, res.dsn) == ("deferred", "4.7.5")
    assert "not listed in its MTA-STS policy" in res.reply or "is listed in its MTA-STS policy" in res.reply
    assert net.good.log.connections == 0
    assert egress.shared.metrics["egress_tls_failures_total:mta-sts-mx"] == 1


async def test_mta_sts_enforce_refuses_a_certificate_that_does_not_verify(net):
    res = await send(net.egress(), "jane@badcert.test")
    assert (res.status, res.dsn) == ("deferred", "4.7.5")
    assert "certificate did not verify" in res.reply
    assert net.bad.log.messages == []


async def test_mta_sts_testing_delivers_and_reports_what_enforce_would_refuse(net, caplog):
    egress = net.egress()
    res = await send(egress, "jane@testing.test")
    assert res.status == "sent"
    assert res.tls.startswith("TLSv1.3 unverified [mta-sts testing: certificate did not verify")
    assert egress.shared.metrics["egress_tls_failures_total:mta-sts-testing"] == 1
    assert egress.shared.metrics["egress_tls_total:testing-failed"] == 1
    assert any("MTA-STS testing" in r.getMessage() for r in caplog.records)


async def test_mta_sts_testing_reports_an_mx_not_in_the_policy_and_delivers(net, caplog):
    egress = net.egress()
    res = await send(egress, "jane@testing2.test")
    assert res.status == "sent"
    assert egress.shared.metrics["egress_tls_failures_total:mta-sts-testing"] == 1
    assert any("mx.good.test is not listed in the policy; delivering anyway" in r.getMessage() for r in caplog.records)


async def test_mta_sts_policy_is_fetched_once_then_served_from_the_cache_until_its_id_changes(net):
    egress = net.egress(mta_sts_recheck=0)  # re-check the TXT id on every look-up
    for _ in range(3):
        assert (await send(egress, "jane@good.test")).status == "sent"
    assert net.https.requests == ["mta-sts.good.test"]
    net.zone.records[("_mta-sts.good.test", "TXT")] = ['"v=STSv1; id=20261202T2;"']
    assert (await send(egress, "jane@good.test")).status == "sent"
    assert net.https.requests == ["mta-sts.good.test"] * 2


async def test_a_cached_policy_survives_a_restart_and_a_vanished_txt_record(net):
    await send(net.egress(), "jane@good.test")
    del net.zone.records[("_mta-sts.good.test", "TXT")]
    del net.https.policies["good.test"]
    net.zone.records[("good.test", "MX")] = ["10 mx.bad.test."]  # an attacker's MX, not in the policy
    res = await send(net.egress(), "jane@good.test")  # a new process: the policy comes from egress.db
    assert (res.status, res.dsn) == ("deferred", "4.7.5")
    assert net.bad.log.connections == 0


async def test_without_a_policy_starttls_stays_opportunistic_and_unverified(net):
    res = await send(net.egress(), "jane@plain.test")
    assert res.status == "sent" and res.tls == "TLSv1.3 unverified"
    res = await send(net.egress(), "jane@cleartext.test")  # no STARTTLS offered: plaintext, as before
    assert res.status == "sent" and res.tls == "none"


async def test_configured_levels_verify_encrypt_and_none(net):
    egress = net.egress(domains={"BadVerify.test.": "verify", "cleartext.test": "encrypt", ".plain.test": "none",
                                 "plain.test": "none"})
    res = await send(egress, "jane@badverify.test")
    assert (res.status, res.dsn) == ("deferred", "4.7.5") and "certificate did not verify" in res.reply
    res = await send(egress, "jane@cleartext.test")
    assert (res.status, res.dsn) == ("deferred", "4.7.4") and "offers no STARTTLS" in res.reply
    res = await send(egress, "jane@plain.test")
    assert res.status == "sent" and res.tls == "none"
    assert net.good.log.messages[-1]["tls"] is False


async def test_dane_ee_record_matching_the_certificate_delivers_verified_by_dane(net):
    res = await send(net.egress(validating=True), "jane@dane.test")
    assert res.status == "sent", res
    assert res.tls == "TLSv1.3 verified (dane)"


async def test_dane_ta_record_matching_the_issuing_ca_delivers(net):
    res = await send(net.egress(validating=True), "jane@danetal.test")
    assert res.status == "sent", res
    assert res.tls == "TLSv1.3 verified (dane)"


async def test_dane_mismatch_defers_and_sends_nothing(net):
    res = await send(net.egress(validating=True), "jane@danebad.test")
    assert (res.status, res.dsn) == ("deferred", "4.7.5")
    assert "DANE: no certificate matches the TLSA records" in res.reply
    assert net.good.log.messages == []


async def test_tlsa_records_without_the_ad_bit_or_a_trusted_resolver_are_ignored(net):
    res = await send(net.egress(validating=True), "jane@insecure.test")  # no AD bit on the answer
    assert res.status == "sent" and res.tls == "TLSv1.3 unverified"
    res = await send(net.egress(validating=False), "jane@danebad.test")  # AD bit, but the resolver is not trusted
    assert res.status == "sent" and res.tls == "TLSv1.3 unverified"


async def test_the_tls_outcome_is_on_the_delivered_event_and_the_log_line(net, data_dir, caplog):
    from pipeline.app.gateway import Gateway
    from pipeline.chain.driver import make_config
    from pipeline.contract.context import MessageContext
    from pipeline.contract.message import Message
    from tests.support.smtp_sink import FAST_RETRIES, EventRecorder

    EventRecorder.reset()
    caplog.set_level(logging.INFO, logger="smtpgate.delivery")
    config = make_config({
        "gateway": {"data_dir": str(data_dir), "hostname": "gw.test"},
        "spool": {**FAST_RETRIES, "bounce_notices": False},
        "egress": {"type": "mx", "mx_port": net.port, "timeout": 5},
        "dns": net.zone.dns_config(),
        "tls_policy": {"ca_file": str(net.ca.ca_file), "mta_sts_port": net.https.port},
    })
    gw = Gateway(config, extra_plugins=[EventRecorder])
    svc = gw.delivery_service(workers=0)
    await svc.start()
    try:
        ctx = MessageContext(message=Message(MSG, "a@example.org", ["jane@good.test"]))
        await gw.spool.enqueue(ctx, MSG, ["jane@good.test"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
    finally:
        await svc.stop(5.0)
        gw.spool.close()
    [event] = EventRecorder.of("delivered")
    assert event.data["tls"] == "TLSv1.3 verified (mta-sts)"
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{ctx.queue_id}: to="))
    assert ", tls=TLSv1.3 verified (mta-sts), status=sent (250 " in line
    EventRecorder.reset()
