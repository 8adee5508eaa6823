"""Bounce notices (RFC 3464 DSNs) to the envelope sender: built, spooled and delivered by the
normal path, readable by the standard library, flufl.bounce and our own bounce parser."""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flufl.bounce import all_failures

from pipeline import Reject, TempFail
from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_config
from pipeline.contract.context import Credential, MessageContext
from pipeline.contract.message import Message
from pipeline.contract.vocabulary import RecipientState
from pipeline.delivery.notices import CAMPAIGN, Failure, build_notice
from pipeline.delivery.scheduler import DeliveryService
from pipeline.events.bounces import parse_report
from pipeline.ports import RecipientOutcome
from plugins.dkim_sign import dns_txt_value
from tests.support.smtp_sink import FAST_RETRIES, EventRecorder, closed_port, smtp_egress, verdict_plugin

HOST = "mx.test.example"
SENDER = "app@example.org"
RAW = (
    b"From: Shop <app@example.org>\r\nTo: someone@example.net\r\nSubject: Your order\r\n"
    b"Message-ID: <order-1@example.org>\r\n\r\nHello\r\n"
)


RejectAll = verdict_plugin(
    "reject_all", Reject(550, "5.7.1", "policy says no"),
    "A plugin that refuses every copy (a policy bounce, no next hop involved).",
)
TempFailAll = verdict_plugin(
    "tempfail_all", TempFail(451, "4.3.0", "key server unreachable"),
    "Processing fails closed for every copy (a key server down, a plugin bug).",
)


@pytest.fixture(autouse=True)
def _events():
    EventRecorder.reset()
    yield
    EventRecorder.reset()


async def start(data_dir: Path, *, extra: tuple = (), chain: tuple[str, ...] = (), storage_url: str | None = None,
                **overrides: Any) -> tuple[Gateway, DeliveryService]:
    cfg: dict[str, Any] = {"gateway": {"data_dir": str(data_dir), "hostname": HOST}, "spool": dict(FAST_RETRIES)}
    if storage_url:
        cfg["storage"] = {"url": storage_url}
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) else value
    gw = Gateway(make_config(cfg, chain), extra_plugins=[EventRecorder, *extra])
    svc = gw.delivery_service(workers=0)
    await svc.start()
    return gw, svc


async def enqueue(gw: Gateway, rcpts: list[str], *, mail_from: str = SENDER, credential: Credential | None = None,
                  features: dict[str, bool] | None = None) -> str:
    ctx = MessageContext(message=Message(RAW, mail_from, rcpts), credential=credential, features=features or {})
    await gw.spool.enqueue(ctx, RAW, rcpts)
    return ctx.queue_id


async def stop(gw: Gateway, svc: DeliveryService) -> None:
    await svc.stop(5.0)
    gw.spool.close()


def delivery_status(data: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    """The parsed notice and the blocks of its message/delivery-status part (stdlib parser)."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    [status] = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    return msg, list(status.get_payload())


# -- delivery end to end ---------------------------------------------------------------------------


async def test_5xx_bounces_get_one_dsn_delivered_to_the_sender_with_every_failed_recipient(sinks, backend):
    controller, sink = sinks(replies={"gone@example.net": ["550 5.1.1 user unknown"],
                                      "left@example.net": ["550 5.1.1 no such user here"]})
    gw, svc = await start(backend.data_dir, storage_url=backend.url, egress=smtp_egress(controller.port))
    try:
        qid = await enqueue(gw, ["gone@example.net", "here@example.net", "left@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered", SENDER)))
    finally:
        await stop(gw, svc)
    # the notice's accepted event is stored once (on PostgreSQL with the notice, in its transaction)
    stored = backend.fetch("SELECT recipient FROM events WHERE type = 'accepted' AND campaign_id = ?", (CAMPAIGN,),
                           db="events")
    assert stored == [(SENDER,)]
    notices = [m for m in sink.messages if m.mail_from == "<>"]  # aiosmtpd shows the null sender as <>
    assert len(notices) == 1 and notices[0].rcpt_tos == [SENDER]
    assert [m.rcpt_tos for m in sink.messages if m.mail_from != "<>"] == [["here@example.net"]]

    msg, blocks = delivery_status(notices[0].data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOST}"
    assert msg["To"].addresses[0].addr_spec == SENDER
    assert msg["Auto-Submitted"] == "auto-replied"
    text, _, headers = msg.get_payload()
    assert "<gone@example.net>: host 127.0.0.1[127.0.0.1]" in text.get_content()
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <order-1@example.org>" in headers.get_payload()
    assert "\r\n\r\n" not in headers.get_payload().rstrip()  # headers only, never the body
    per_msg, *per_rcpt = blocks
    assert per_msg["Reporting-MTA"] == f"dns; {HOST}"
    assert per_msg["X-Smtpgate-Queue-ID"] == qid
    assert email.utils.parsedate_to_datetime(per_msg["Arrival-Date"]) is not None
    assert [b["Final-Recipient"] for b in per_rcpt] == ["rfc822; gone@example.net", "rfc822; left@example.net"]
    gone = per_rcpt[0]
    assert gone["Action"] == "failed" and gone["Status"] == "5.1.1"
    assert gone["Remote-MTA"] == "dns; 127.0.0.1"
    assert gone["Diagnostic-Code"] == "smtp; 550 5.1.1 user unknown"

    # Our own bounce parser and flufl.bounce both read it as a bounce for the right recipients.
    report = parse_report(notices[0].data)
    assert report.kind == "dsn"
    line = report.for_recipient("left@example.net")
    assert line is not None and line.address == "left@example.net" and line.status == "5.1.1"
    assert line.bounce_class == "hard"
    temporary, permanent = all_failures(email.message_from_bytes(notices[0].data))
    assert permanent == {b"gone@example.net", b"left@example.net"} and not temporary

    # The notice is the gateway's own mail: no credential, its own campaign, linked to the original.
    [accepted] = [e for e in EventRecorder.of("accepted") if e.campaign_id == CAMPAIGN]
    assert accepted.credential is None and accepted.recipient == SENDER
    assert accepted.data == {"notice_for": qid, "failed_recipients": ["gone@example.net", "left@example.net"]}
    [delivered] = EventRecorder.of("delivered", SENDER)
    assert delivered.queue_id == accepted.queue_id and delivered.campaign_id == CAMPAIGN


@pytest.mark.parametrize(
    ("mail_from", "credential", "overrides"),
    [
        ("", None, {}),
        (SENDER, Credential("demo", sandbox=True), {}),
        (SENDER, None, {"spool": {"bounce_notices": False}}),
    ],
    ids=["null-sender", "sandbox", "disabled"],
)
async def test_no_notice_for_null_sender_sandbox_or_when_disabled(data_dir, mail_from, credential, overrides):
    gw, svc = await start(data_dir, extra=(RejectAll,), **overrides)
    try:
        qid = await enqueue(gw, ["x@example.net"], mail_from=mail_from, credential=credential)
        await EventRecorder.until(lambda: bool(EventRecorder.of("bounced")))
        # The notice would have been spooled before the bounce was recorded and evented.
        assert gw.spool.list_recipients() == []
    finally:
        await stop(gw, svc)
    assert [e.queue_id for e in EventRecorder.events] == [qid]
    assert not (data_dir / "maildir").exists() or not any((data_dir / "maildir" / "new").iterdir())


async def test_no_notice_when_the_copy_left_with_a_verp_bounce_address(sinks, data_dir):
    controller, sink = sinks(replies={"gone@example.net": ["550 5.1.1 user unknown"]})
    gw, svc = await start(
        data_dir, chain=("bounce_tracking",), egress=smtp_egress(controller.port),
        tracking={"bounce_domain": "bounces.test.example"}, features={"trackbounces": True},
    )
    try:
        await enqueue(gw, ["gone@example.net"], features={"trackbounces": True})
        await EventRecorder.until(lambda: bool(EventRecorder.of("bounced")))
        assert gw.spool.list_recipients() == []
    finally:
        await stop(gw, svc)
    assert sink.messages == [] and sink.rcpt_log == ["gone@example.net"]
    assert EventRecorder.of("accepted") == []


async def test_failed_processing_gets_a_notice_and_a_failing_notice_gets_none(data_dir):
    gw, svc = await start(data_dir, extra=(TempFailAll,), spool={"max_plugin_attempts": 2})
    try:
        qid = await enqueue(gw, ["x@example.net"])
        await EventRecorder.until(lambda: len(EventRecorder.of("failed")) == 2)
        assert gw.spool.list_recipients() == []  # no third message: the notice's sender is <>
    finally:
        await stop(gw, svc)
    original, notice = EventRecorder.of("failed")
    assert original.queue_id == qid and original.recipient == "x@example.net"
    assert notice.recipient == SENDER and notice.campaign_id == CAMPAIGN and notice.credential is None
    [accepted] = EventRecorder.of("accepted")
    assert accepted.queue_id == notice.queue_id and accepted.data["notice_for"] == qid


async def test_expiry_sends_a_447_notice_through_the_default_egress(sinks, data_dir):
    controller, sink = sinks()
    gw, svc = await start(
        data_dir, egress=smtp_egress(controller.port), egresses={"dead": smtp_egress(closed_port())},
        spool={"lifetime": 0.3},
    )
    try:
        qid = await enqueue(gw, ["slow@example.net"], credential=Credential("app", egress="dead"))
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered", SENDER)))
    finally:
        await stop(gw, svc)
    [notice] = sink.messages
    assert notice.mail_from == "<>" and notice.rcpt_tos == [SENDER]
    _, (per_msg, block) = delivery_status(notice.data)
    assert per_msg["X-Smtpgate-Queue-ID"] == qid
    assert block["Final-Recipient"] == "rfc822; slow@example.net"
    assert block["Action"] == "failed" and block["Status"] == "4.4.7"
    assert block["Remote-MTA"] == "dns; 127.0.0.1"
    assert block["Diagnostic-Code"].startswith("X-smtpgate; connect to 127.0.0.1:")
    line = parse_report(notice.data).for_recipient("slow@example.net")
    assert line is not None and line.status == "4.4.7" and line.bounce_class == "soft"
    [expired] = EventRecorder.of("expired")
    assert expired.queue_id == qid and expired.credential == "app"


async def test_notice_is_dkim_signed_when_the_hostname_domain_has_a_key(sinks, data_dir, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "test.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    controller, sink = sinks(replies={"gone@example.net": ["550 5.1.1 user unknown"]})
    gw, svc = await start(
        data_dir, chain=("dkim_sign",), egress=smtp_egress(controller.port),
        plugins={"dkim_sign": {"domains": {"test.example": {"selector": "s1", "key_file": str(key_file)}}}},
    )
    try:
        await enqueue(gw, ["gone@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered", SENDER)))
    finally:
        await stop(gw, svc)
    [notice] = sink.messages
    records = {b"s1._domainkey.test.example.": dns_txt_value(key).encode()}
    assert b"d=test.example" in notice.data
    assert dkim.verify(notice.data, dnsfunc=lambda name, timeout=5: records.get(name, b""))


# -- the message itself ----------------------------------------------------------------------------


def test_long_and_non_ascii_diagnostics_are_folded_and_still_parse():
    reply = "550 5.7.1 " + " ".join(["rejected-because-of-a-very-long-policy-explanation"] * 15) + " – naïve"
    failure = Failure("gone@example.net", "bounced", "5.7.1", reply, "mx.example.net[192.0.2.7]:25")
    data = build_notice(hostname=HOST, sender=SENDER, queue_id="Q1", arrival=0.0, failures=[failure],
                        original=RAW, notice_id="N1")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    _, (_, block) = delivery_status(data)
    # DSN fields are US-ASCII: the diagnostic says "?" where the reply had other characters ...
    assert " ".join(str(block["Diagnostic-Code"]).split()) == "smtp; " + reply.replace("–", "?").replace("ï", "?")
    text = email.message_from_bytes(data, policy=email.policy.default).get_payload()[0].get_content()
    assert text.rstrip().endswith("– naïve")  # ... and the human-readable part keeps them
    assert block["Remote-MTA"] == "dns; mx.example.net"
    assert parse_report(data).for_recipient("gone@example.net").status == "5.7.1"  # type: ignore[union-attr]


def test_processing_failures_are_reported_without_internal_details():
    failure = Failure.of(RecipientOutcome("Q1", "x@example.net", RecipientState.FAILED, 5, "5.3.0",
                                          "processing failed 5 times; last: local error: KeyError: 'secret'"))
    data = build_notice(hostname=HOST, sender=SENDER, queue_id="Q1", arrival=0.0, failures=[failure],
                        original=RAW, notice_id="N1")
    assert b"KeyError" not in data and b"secret" not in data
    _, (_, block) = delivery_status(data)
    assert block["Status"] == "5.3.0" and block["Remote-MTA"] is None


def test_bounce_without_a_valid_enhanced_code_reports_500():
    failure = Failure.of(RecipientOutcome("Q1", "x@example.net", RecipientState.BOUNCED, 1, "", "554 no"))
    assert failure.status == "5.0.0" and failure.diagnostic() == "smtp; 554 no"


