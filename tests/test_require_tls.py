"""A message's own TLS demand (X-Mailgun-Require-TLS, -Skip-Verification): carried on the context
to the egress; the smarthost and mx egresses defer a copy the next hop cannot carry that securely,
never send it in clear, and a message without the demand goes out as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosmtplib

from pipeline.app.gateway import Gateway
from pipeline.app.harness import ingress_test_config, running_ingress, spooled
from pipeline.chain.driver import make_config, run_chain
from pipeline.config import EgressSection
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.egress.base import Copy
from pipeline.egress.mx import MxEgress, raised
from pipeline.egress.resolver import StaticResolver
from pipeline.egress.smtp import SmtpEgress
from pipeline.egress.tlspolicy import Requirement
from tests.support import SAMPLES, complete_message
from tests.support.smtp_sink import FAST_RETRIES, EventRecorder, smtp_egress

RAW = b"From: app@example.org\r\nTo: someone@example.net\r\nSubject: test\r\n\r\nHello\r\n"


def demand(*lines: str) -> str | None:
    raw = complete_message(extra="".join(f"{line}\r\n" for line in lines))
    result = run_chain(raw, ["mailgun_headers"], rcpt_tos=["r@example.org"])
    assert result.verdict is None
    assert result.ctx.to_record()["require_tls"] == result.ctx.require_tls
    return result.ctx.require_tls


def test_the_mailgun_headers_set_the_message_demand():
    assert demand("X-Mailgun-Require-TLS: yes") == "verify"
    assert demand("X-Mailgun-Require-TLS: yes", "X-Mailgun-Skip-Verification: yes") == "encrypt"
    assert demand("X-Mailgun-Require-TLS: no", "X-Mailgun-Skip-Verification: yes") is None
    assert demand() is None


async def test_the_demand_is_spooled_with_the_message_received_over_smtp(data_dir: Path):
    cfg = ingress_test_config(data_dir, chain=["mailgun_headers"],
                              credentials=[{"name": "app", "kind": "ip", "networks": ["127.0.0.1/32"]}])
    raw = (SAMPLES / "20-mailgun-headers.eml").read_bytes()  # X-Mailgun-Require-TLS: yes
    async with running_ingress(cfg) as (_, ingress):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("plain"), timeout=10)
        await client.connect()
        errors, _ = await client.sendmail("app@example.com", ["r@example.org"], raw)
        await client.quit()
    assert errors == {}
    [msg] = spooled(data_dir)
    assert msg["context"]["require_tls"] == "verify"


def copy(rcpt: str, require: str | None = None) -> Copy:
    return Copy("Q1", rcpt, "app@example.org", RAW, None, require)


async def test_smarthost_without_starttls_defers_a_copy_that_demands_tls(sinks):
    controller, sink = sinks()
    egress = SmtpEgress(EgressSection(**smtp_egress(controller.port)), "gw.test")
    try:
        [enc] = await egress.deliver([copy("a@example.net", "encrypt")])
        [ver] = await egress.deliver([copy("b@example.net", "verify")])
        [plain] = await egress.deliver([copy("c@example.net")])
    finally:
        await egress.close()
    assert (enc.status, enc.dsn, ver.status, ver.dsn) == ("deferred", "4.7.4", "deferred", "4.7.4")
    assert plain.status == "sent" and plain.tls == "none"
    assert [m.rcpt_tos for m in sink.messages] == [["c@example.net"]]


async def test_smarthost_with_an_untrusted_certificate_takes_only_the_skip_verification_copy(sinks, tls_cert):
    controller, sink = sinks(tls=tls_cert)
    egress = SmtpEgress(EgressSection(**smtp_egress(controller.port)), "gw.test")  # tls = "none" configured
    try:
        [ver] = await egress.deliver([copy("a@example.net", "verify")])
        [enc] = await egress.deliver([copy("b@example.net", "encrypt")])
        [plain] = await egress.deliver([copy("c@example.net")])
    finally:
        await egress.close()
    assert (ver.status, ver.dsn) == ("deferred", "4.7.5")
    assert enc.status == "sent" and enc.tls.endswith("unverified")
    assert plain.status == "sent" and plain.tls == "none"  # the configured level, as before
    assert [(m.rcpt_tos, bool(m.tls)) for m in sink.messages] == [(["b@example.net"], True), (["c@example.net"], False)]


async def test_smarthost_with_a_trusted_certificate_takes_the_verify_copy(sinks, tls_cert):
    controller, sink = sinks(tls=tls_cert)
    egress = SmtpEgress(EgressSection(**smtp_egress(controller.port, ca_file=str(tls_cert[0]))), "gw.test")
    try:
        [ver] = await egress.deliver([copy("a@example.net", "verify")])
    finally:
        await egress.close()
    assert ver.status == "sent" and ver.tls.endswith(" verified") and sink.messages[0].tls


async def test_mx_raises_the_level_for_the_copy_only(sinks, tls_cert):
    plain_ctl, plain_sink = sinks()
    tls_ctl, tls_sink = sinks(tls=tls_cert)
    results: dict[str, Any] = {}
    for label, ctl in (("plain", plain_ctl), ("tls", tls_ctl)):
        egress = MxEgress(EgressSection(type="mx", mx_port=ctl.port, tls="starttls"), "gw.test",
                          resolver=StaticResolver(["127.0.0.1"]))
        try:
            for require in ("verify", "encrypt", None):
                [results[f"{label}-{require}"]] = await egress.deliver([copy(f"{require}@example.net", require)])
        finally:
            await egress.close()
    assert {k: (r.status, r.dsn) for k, r in results.items()} == {
        "plain-verify": ("deferred", "4.7.4"),  # no STARTTLS offered
        "plain-encrypt": ("deferred", "4.7.4"),
        "plain-None": ("sent", "2.0.0"),  # opportunistic (level may), as before
        "tls-verify": ("deferred", "4.7.5"),  # self-signed: the chain does not verify
        "tls-encrypt": ("sent", "2.0.0"),
        "tls-None": ("sent", "2.0.0"),
    }
    assert [m.rcpt_tos for m in plain_sink.messages] == [["None@example.net"]]
    assert [m.rcpt_tos for m in tls_sink.messages] == [["encrypt@example.net"], ["None@example.net"]]


def test_a_message_demand_only_raises_the_destination_level():
    verify = Requirement("verify", "policy")
    assert raised(verify, "encrypt") is verify
    assert raised(Requirement("dane", "dane"), "verify").level == "dane"
    assert raised(Requirement("may"), "encrypt") == Requirement("encrypt", "message")
    assert raised(Requirement("none", "policy"), "verify") == Requirement("verify", "message")
    assert raised(Requirement("verify", "mta-sts", report_only=True), "verify") == Requirement("verify", "message")
    assert raised(Requirement("encrypt", "dane"), None) == Requirement("encrypt", "dane")


async def test_delivery_defers_then_expires_a_demanding_message_the_smarthost_cannot_carry(sinks, data_dir: Path):
    EventRecorder.reset()
    controller, sink = sinks()
    overrides: dict[str, Any] = {
        "gateway": {"data_dir": str(data_dir)},
        "spool": {**FAST_RETRIES, "bounce_notices": False, "lifetime": 1},
        "egress": smtp_egress(controller.port),
    }
    gw = Gateway(make_config(overrides), extra_plugins=[EventRecorder])
    svc = gw.delivery_service(workers=0)
    await svc.start()
    try:
        for rcpt, require in (("strict@example.net", "encrypt"), ("open@example.net", None)):
            ctx = MessageContext(message=Message(RAW, "app@example.org", [rcpt]), require_tls=require)
            await gw.spool.enqueue(ctx, RAW, [rcpt])
        await EventRecorder.until(lambda: bool(EventRecorder.of("expired")) and bool(EventRecorder.of("delivered")))
    finally:
        await svc.stop(5.0)
        gw.spool.close()
    deferred = EventRecorder.of("deferred", "strict@example.net")
    [expired] = EventRecorder.of("expired", "strict@example.net")
    assert deferred and all(e.data["dsn"] == "4.7.4" for e in deferred)
    assert expired.data["dsn"] == "4.4.7" and "STARTTLS" in expired.data["reply"]
    assert [m.rcpt_tos for m in sink.messages] == [["open@example.net"]]
