"""Bounces and complaints: parsing, the bounce-domain handler, and a DSN over real SMTP."""

from __future__ import annotations

import base64

import pytest

from pipeline.app.gateway import Gateway
from pipeline.app.harness import Dialogue
from pipeline.contract.context import Event
from pipeline.events import parse_verp, recipient_hash, verp_local_part
from pipeline.events.bounces import classify_status, parse_report
from pipeline.toolkit.tokens import TokenSigner
from tests.support.bounces import arf, dsn, qmail, vacation
from tests.support.tracking import signer, tracking_config

DOMAIN = "bounce.example.com"


def verp(rcpt: str = "ann@example.net", queue_id: str = "Q1", kind: str = "b", prefix: str = "bounces",
         key: TokenSigner | None = None) -> str:
    return f"{verp_local_part(key or signer(), prefix, kind, queue_id, rcpt)}@{DOMAIN}"


def test_rfc3464_dsn_hard_bounce_is_parsed_with_status_and_diagnostic():
    report = parse_report(dsn(verp(), "ann@example.net"))
    assert report.kind == "dsn"
    [line] = report.recipients
    assert (line.address, line.action, line.status, line.bounce_class) == ("ann@example.net", "failed", "5.1.1", "hard")
    assert "User unknown" in (line.diagnostic or "")


def test_delayed_dsn_is_soft_and_delivered_lines_are_not_failures():
    assert parse_report(dsn(verp(), "a@x.net", "4.4.1", "delayed")).recipients[0].bounce_class == "soft"
    assert parse_report(dsn(verp(), "a@x.net", "2.0.0", "delivered")).for_recipient("a@x.net") is None


@pytest.mark.parametrize(
    "status,cls", [("5.1.1", "hard"), ("5.1.10", "hard"), ("5.0.0", "hard"), ("5.2.1", "hard"), ("5.4.4", "hard"),
                   ("5.2.2", "soft"), ("5.7.1", "soft"), ("5.6.0", "soft"), ("5.3.4", "soft"), ("4.2.2", "soft"),
                   (None, "hard")],
)
def test_status_classification(status, cls):
    assert classify_status(status) == cls


def test_arf_report_is_a_complaint_with_its_fields():
    report = parse_report(arf(verp(), "ann@example.net"))
    assert report.kind == "arf"
    assert report.feedback["feedback-type"] == "abuse"
    assert report.feedback["original-rcpt-to"] == "<ann@example.net>"


def test_non_rfc_bounce_falls_back_to_flufl_bounce():
    report = parse_report(qmail(verp(), "nobody@example.org"))
    assert report.kind == "heuristic"
    assert report.for_recipient("nobody@example.org").bounce_class == "hard"


@pytest.mark.parametrize("raw", [b"", b"\x00\xff garbage", b"Subject: hi\r\n\r\nhello"])
def test_unreadable_or_plain_mail_is_not_a_bounce(raw):
    assert parse_report(raw).kind == "none"


@pytest.fixture
async def gateway(tmp_path):
    gw = Gateway(tracking_config(tmp_path / "data", {"tracking": {"bounce_domain": DOMAIN}}))
    yield gw
    await gw.stop()


async def test_handler_records_hard_bounce_tied_to_copy_and_suppresses(gateway):
    await gateway.emit(Event("accepted", queue_id="Q1", recipient="ann@example.net", credential="shop",
                             campaign_id="spring", letter_id="L-5"))
    handler = gateway.inbound_handlers[DOMAIN]
    address = verp()
    await handler("", [address], dsn(address, "ann@example.net"))
    [bounce] = gateway.events.events(type="bounced")
    e = bounce.event
    assert (e.queue_id, e.recipient, e.credential, e.campaign_id, e.letter_id) == ("Q1", "ann@example.net", "shop",
                                                                                 "spring", "L-5")
    assert e.data["status"] == "5.1.1" and e.data["source"] == "dsn" and bounce.bounce_class == "hard"
    assert gateway.events.is_suppressed("ann@example.net", "shop")


async def test_handler_soft_bounce_and_delay_do_not_suppress(gateway):
    handler = gateway.inbound_handlers[DOMAIN]
    await handler("", [verp()], dsn(verp(), "ann@example.net", "5.2.2", "failed"))
    await handler("", [verp()], dsn(verp(), "ann@example.net", "4.4.7", "delayed"))
    [bounce] = gateway.events.events(type="bounced")
    assert bounce.bounce_class == "soft"
    assert [e.event.data["status"] for e in gateway.events.events(type="deferred")] == ["4.4.7"]
    assert not gateway.events.is_suppressed("ann@example.net")


async def test_handler_turns_arf_into_complaint_and_suppresses(gateway):
    await gateway.inbound_handlers[DOMAIN]("fbl@fbl.example.net", [verp()], arf(verp(), "ann@example.net"))
    [complaint] = gateway.events.events(type="complained")
    assert complaint.event.data["feedback_type"] == "abuse"
    assert gateway.events.is_suppressed("ann@example.net")


async def test_mailto_unsubscribe_records_unsubscribed(gateway):
    await gateway.emit(Event("accepted", queue_id="Q1", recipient="ann@example.net", credential="shop"))
    address = verp(kind="u", prefix="unsub")
    await gateway.inbound_handlers[DOMAIN]("someone-else@example.org", [address], vacation(address))
    [unsub] = gateway.events.events(type="unsubscribed")
    assert (unsub.event.recipient, unsub.event.credential) == ("ann@example.net", "shop")
    assert gateway.events.is_suppressed("ann@example.net", "shop")


def test_verp_local_part_fits_rfc5321_and_round_trips():
    local = verp_local_part(signer(), "bounces", "b", "2b7Kq9ZxBCDFGHJK", "Some.Long.Name@example.net")
    assert len(local) <= 64
    token = parse_verp(signer(), local)
    assert token is not None and (token.kind, token.queue_id) == ("b", "2b7Kq9ZxBCDFGHJK")
    assert token.rcpt_hash == recipient_hash("some.long.name@EXAMPLE.net")
    assert token.match(["other@example.net", "<Some.Long.Name@example.net>"]) == "some.long.name@example.net"
    with pytest.raises(ValueError, match="max 64"):
        verp_local_part(TokenSigner({"a-very-long-key-id": b"k"}, "a-very-long-key-id"), "bounces", "b", "Q" * 16, "a@b.c")
    with pytest.raises(ValueError, match="queue id"):
        verp_local_part(signer(), "bounces", "b", "bad.id", "a@b.c")


@pytest.mark.parametrize(
    "address",
    [
        verp("victim@x.net", key=TokenSigner({"k1": b"forged"}, "k1")),
        verp("victim@x.net").replace("Q1.", "Q2."),  # another copy's id under this MAC
        f"bounces+{signer().sign({'k': 'b', 'q': 'Q1', 'r': 'victim@x.net'})}@{DOMAIN}",  # long token form
        f"bounces+garbage@{DOMAIN}",
        f"bounces@{DOMAIN}",
    ],
)
async def test_forged_or_missing_token_changes_nothing(gateway, address):
    await gateway.inbound_handlers[DOMAIN]("", [address], dsn(address, "victim@x.net"))
    assert gateway.events.events() == [] and gateway.events.suppressions() == []
    assert gateway.counters["inbound_total:invalid"] == 1


async def test_auto_reply_to_bounce_address_is_ignored(gateway):
    await gateway.inbound_handlers[DOMAIN]("ann@example.net", [verp()], vacation(verp()))
    assert gateway.events.events() == []


async def test_dsn_sent_over_smtp_to_verp_address_becomes_bounce_and_suppression(tmp_path):
    config = tracking_config(tmp_path / "data", {
        "tracking": {"bounce_domain": DOMAIN},
        "listeners": [{"name": "mx", "port": 0, "tls": "none", "require_tls": False}],
        "credentials": [{"name": "shop", "username": "shop", "secret": "pw-shop"}],
    }, plugins=["suppression"])
    gw = Gateway(config)
    ingress = gw.ingress_service()
    gw.services = [ingress]
    await gw.start()
    try:
        await gw.emit(Event("accepted", queue_id="Q1", recipient="ann@example.net", credential="shop",
                            campaign_id="spring"))
        address = verp()
        d = await Dialogue.connect("127.0.0.1", ingress.port("mx"))
        assert (await d.reply()).code == 220
        assert (await d.cmd("EHLO mx.example.org")).code == 250
        assert (await d.cmd("MAIL FROM:<>")).code == 250  # a DSN has the null sender, and no AUTH
        assert (await d.cmd(f"RCPT TO:<{address}>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        body = dsn(address, "ann@example.net").replace(b"\r\n.", b"\r\n..")
        r = await d.cmd(body + b"\r\n.\r\n")
        assert r.code == 250, r
        await d.cmd("QUIT")
        await d.close()
        [bounce] = gw.events.events(type="bounced")
        assert (bounce.event.queue_id, bounce.event.recipient, bounce.event.campaign_id) == ("Q1", "ann@example.net",
                                                                                           "spring")
        assert gw.events.is_suppressed("ann@example.net", "shop")
        # and the stoplist now answers the next RCPT from that credential, with Sendsay's hard-bounce text
        d = await Dialogue.connect("127.0.0.1", ingress.port("mx"))
        await d.reply()
        await d.cmd("EHLO client.test")
        auth = base64.b64encode(b"\0shop\0pw-shop").decode()
        assert (await d.cmd(f"AUTH PLAIN {auth}")).code == 235
        assert (await d.cmd("MAIL FROM:<news@shop.example>")).code == 250
        r = await d.cmd("RCPT TO:<ann@example.net>")
        assert (r.code, r.enhanced, r.text) == (550, "5.0.0", "5.0.0 Email has permanent delivery errors")
        await d.cmd("QUIT")
        await d.close()
    finally:
        await gw.stop(grace=1.0)
