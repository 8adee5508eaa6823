"""Vendor webhook formats: delivered, opened, clicked, bounced and unsubscribed events reach a real
local aiohttp receiver in SendGrid's, Mailgun's and Postmark's shape, with a signature that verifies
the way each vendor documents it, compared against the vendors' published example payloads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_webhooks import Receiver, start_gateway, wait_until

from pipeline.app.cli import main
from pipeline.app.gateway import Gateway
from pipeline.config import ConfigError
from pipeline.contract.context import Event
from pipeline.events.stats import stats_report, tag_stats
from pipeline.events.webhook_formats.sendgrid import public_key
from tests.support.tracking import tracking_config
from tests.support.vendor_webhooks import (
    MAILGUN_DELIVERED,
    POSTMARK,
    POSTMARK_NOT_PROVIDED,
    SENDGRID,
    SENDGRID_NOT_PROVIDED,
    SENDGRID_SIGNED,
    shape,
)

FIVE = ["delivered", "opened", "clicked", "bounced", "unsubscribed"]
MAILGUN_KEY = "key-mailgun-signing"
TAGS = ["welcome", "onboarding"]
METADATA = {"user_id": "1001", "plan": "pro"}


@pytest.fixture
async def receiver():
    r = Receiver([])
    await r.start()
    yield r
    assert r.runner is not None
    await r.runner.cleanup()


def sendgrid_verifies(public_b64: str, timestamp: str, payload: bytes, signature_b64: str) -> bool:
    """SendGrid's documented check: ECDSA P-256/SHA-256 of timestamp + raw body, key and signature base64 DER."""
    verifier = serialization.load_der_public_key(base64.b64decode(public_b64))
    assert isinstance(verifier, ec.EllipticCurvePublicKey)
    try:
        verifier.verify(base64.b64decode(signature_b64), timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def test_the_sendgrid_check_accepts_sendgrids_own_test_vector():
    """So the check the format test relies on is SendGrid's algorithm, not only our own round trip."""
    v = SENDGRID_SIGNED
    assert sendgrid_verifies(v["public_key"], v["timestamp"], v["payload"], v["signature"])
    assert not sendgrid_verifies(v["public_key"], "1588788368", v["payload"], v["signature"])


def pem_key() -> tuple[str, str]:
    """A P-256 key as the endpoint's PEM, and its public half as SendGrid shows it (base64 DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return pem, public_key(key)


async def deliver_five(tmp_path, endpoint: dict[str, Any], receiver: Receiver, expect: int = 5) -> Gateway:
    """The message is accepted with tags and metadata, then the five events happen while no webhook
    sender runs; a restarted gateway sends them (so SendGrid's are batched into one POST)."""
    config = tracking_config(tmp_path / "data", {"webhooks": {"endpoints": [{"url": receiver.url, **endpoint}]}})
    quiet = Gateway(config)
    quiet.services = []
    await quiet.start()
    common = {"queue_id": "Q1", "recipient": "ann@example.net", "credential": "shop", "campaign_id": "welcome"}
    await quiet.emit(Event("accepted", tags=tuple(TAGS), metadata=METADATA, **common))
    await quiet.emit(Event("delivered", data={"reply": "250 2.0.0 Ok: queued as 4Xyz", "dsn": "2.0.0"}, **common))
    await quiet.emit(Event("opened", data={"user_agent": "Mozilla/5.0", "machine": False}, **common))
    await quiet.emit(Event("clicked", url="https://shop.example.com/a?b=1", data={"user_agent": "Mozilla/5.0"},
                           **common))
    await quiet.emit(Event("bounced", data={"status": "5.1.1", "diagnostic": "550 5.1.1 no such user",
                                            "class": "hard"}, **common))
    await quiet.emit(Event("unsubscribed", data={"source": "one-click"}, **common))
    await quiet.stop()
    gw = await start_gateway(config)
    await wait_until(lambda: gw.events.webhook_counts().get("delivered") == expect)
    return gw


async def test_sendgrid_events_arrive_batched_and_signed_in_sendgrids_shape(tmp_path, receiver):
    pem, public = pem_key()
    gw = await deliver_five(tmp_path, {"format": "sendgrid", "events": FIVE, "signing_key": pem}, receiver)
    await gw.stop()
    [(headers, body, _)] = receiver.requests  # five events, one POST: SendGrid batches
    timestamp = headers["X-Twilio-Email-Event-Webhook-Timestamp"]
    signature = headers["X-Twilio-Email-Event-Webhook-Signature"]
    assert sendgrid_verifies(public, timestamp, body, signature)
    assert not sendgrid_verifies(public, timestamp, body + b" ", signature)
    events = {e["event"]: e for e in json.loads(body)}
    assert sorted(events) == sorted(SENDGRID)
    for name, example in SENDGRID.items():
        ours = events[name]
        assert set(example) - SENDGRID_NOT_PROVIDED <= set(ours), name
        assert ours["email"] == "ann@example.net" and ours["category"] == TAGS
        assert ours["user_id"] == "1001" and ours["plan"] == "pro"  # unique args: top-level keys
        for key in set(example) & set(ours) - {"category"}:
            assert shape(ours[key]) == shape(example[key]), (name, key)
    assert events["click"]["url"] == "https://shop.example.com/a?b=1"
    assert (events["bounce"]["type"], events["bounce"]["status"]) == ("bounce", "5.1.1")
    assert len({e["sg_event_id"] for e in events.values()}) == 5


async def test_mailgun_events_arrive_one_per_post_with_a_verifying_token_signature(tmp_path, receiver):
    gw = await deliver_five(tmp_path, {"format": "mailgun", "events": FIVE, "signing_key": MAILGUN_KEY}, receiver)
    await gw.stop()
    assert len(receiver.requests) == 5
    seen: dict[str, dict[str, Any]] = {}
    for _, body, _ in receiver.requests:
        payload = json.loads(body)
        sig = payload["signature"]
        expected = hmac.new(MAILGUN_KEY.encode(), (sig["timestamp"] + sig["token"]).encode(), hashlib.sha256)
        assert hmac.compare_digest(expected.hexdigest(), sig["signature"])  # Mailgun's documented check
        assert len(sig["token"]) == 50 and set(sig) == set(MAILGUN_DELIVERED["signature"])
        data = payload["event-data"]
        seen[data["event"]] = data
        example = MAILGUN_DELIVERED["event-data"]
        assert set(example) - {"delivery-status"} <= set(data)
        for key in ("id", "timestamp", "log-level", "tags", "user-variables", "recipient", "recipient-domain"):
            assert type(data[key]) is type(example[key]), key
        assert set(example["message"]["headers"]) <= set(data["message"]["headers"])
        assert data["tags"] == TAGS and data["user-variables"] == METADATA
    assert sorted(seen) == ["clicked", "delivered", "failed", "opened", "unsubscribed"]
    assert set(MAILGUN_DELIVERED["event-data"]["delivery-status"]) <= set(seen["delivered"]["delivery-status"])
    assert seen["delivered"]["delivery-status"]["code"] == 250
    assert (seen["failed"]["severity"], seen["failed"]["reason"]) == ("permanent", "bounce")
    assert seen["clicked"]["url"] == "https://shop.example.com/a?b=1"


async def test_postmark_records_arrive_per_type_with_basic_auth(tmp_path, receiver):
    endpoint = {"format": "postmark", "events": FIVE, "username": "hook", "password": "s3cret"}
    gw = await deliver_five(tmp_path, endpoint, receiver)
    await gw.stop()
    assert len(receiver.requests) == 5
    records: dict[str, dict[str, Any]] = {}
    for headers, body, _ in receiver.requests:
        scheme, _, encoded = headers["Authorization"].partition(" ")
        assert (scheme, base64.b64decode(encoded)) == ("Basic", b"hook:s3cret")
        record = json.loads(body)
        records[record["RecordType"]] = record
    assert sorted(records) == sorted(POSTMARK)
    for kind, example in POSTMARK.items():
        ours = records[kind]
        assert set(example) - POSTMARK_NOT_PROVIDED <= set(ours), kind
        for key in set(example) & set(ours):
            assert type(ours[key]) is type(example[key]) or isinstance(example[key], dict), (kind, key)
        assert ours["Tag"] == "welcome" and ours["Metadata"] == METADATA
    assert records["Click"]["OriginalLink"] == "https://shop.example.com/a?b=1"
    assert (records["Bounce"]["Type"], records["Bounce"]["TypeCode"], records["Bounce"]["Email"]) == (
        "HardBounce", 1, "ann@example.net",
    )


async def test_an_endpoint_gets_only_the_event_types_it_asked_for(tmp_path, receiver):
    gw = await deliver_five(tmp_path, {"format": "smtpgate", "events": ["bounced", "unsubscribed"]}, receiver, 2)
    try:
        assert gw.events.webhook_counts() == {"delivered": 2}
    finally:
        await gw.stop()
    bodies = [json.loads(b) for _, b, _ in receiver.requests]
    assert sorted(b["event"] for b in bodies) == ["bounced", "unsubscribed"]
    assert all(b["tags"] == TAGS and b["metadata"] == METADATA for b in bodies)  # smtpgate's format carries them


async def test_postmark_is_not_sent_the_event_types_it_does_not_have(tmp_path, receiver):
    config = tracking_config(tmp_path / "data", {"webhooks": {"endpoints": [{"url": receiver.url, "format": "postmark"}]}})
    gw = await start_gateway(config)
    try:
        await gw.emit(Event("deferred", queue_id="Q1", recipient="a@example.net", data={"reply": "451 later"}))
        await gw.emit(Event("delivered", queue_id="Q1", recipient="a@example.net", data={"reply": "250 ok"}))
        await wait_until(lambda: gw.events.webhook_counts() == {"delivered": 1})
    finally:
        await gw.stop()
    [(_, body, _)] = receiver.requests
    assert json.loads(body)["RecordType"] == "Delivery"


async def test_statistics_count_each_tag(tmp_path, receiver):
    gw = await deliver_five(tmp_path, {"format": "smtpgate", "events": ["delivered"]}, receiver, 1)
    try:
        rows = {r["tag"]: r for r in tag_stats(gw.events)}
        report = stats_report(gw.events)  # what GET /api/stats returns
        other = tag_stats(gw.events, campaign="other")
    finally:
        await gw.stop()
    assert sorted(rows) == sorted(TAGS)
    for row in rows.values():
        assert (row["sent"], row["delivered"], row["unique_opens"], row["unique_clicks"]) == (1, 1, 1, 1)
        assert (row["bounced_hard"], row["unsubscribes"]) == (1, 1)
    assert report["tags"] == list(rows.values()) and other == []


def test_one_url_cannot_have_two_formats(tmp_path):
    endpoints = [{"url": "http://127.0.0.1:9/h", "format": "sendgrid"}, {"url": "http://127.0.0.1:9/h"}]
    with pytest.raises(ConfigError, match="listed twice"):
        tracking_config(tmp_path, {"webhooks": {"endpoints": endpoints}})


def test_an_unknown_event_type_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="webhooks.endpoints"):
        tracking_config(tmp_path, {"webhooks": {"endpoints": [{"url": "http://127.0.0.1:9/h", "events": ["sent"]}]}})


def test_the_cli_prints_the_verification_key_of_the_generated_sendgrid_key(tmp_path, monkeypatch):
    config = tmp_path / "smtpgate.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        '[[webhooks.endpoints]]\nurl = "http://127.0.0.1:9/sg"\nformat = "sendgrid"\n'
    )
    monkeypatch.delenv("SMTPGATE_DATA_DIR", raising=False)
    first = CliRunner().invoke(main, ["webhooks", "sendgrid-public-key", "--config", str(config)])
    again = CliRunner().invoke(main, ["webhooks", "sendgrid-public-key", "--config", str(config)])
    assert first.exit_code == 0, first.output
    url, key = first.stdout.split()
    assert url == "http://127.0.0.1:9/sg" and again.stdout == first.stdout  # generated once, then reused
    pem = (tmp_path / "data" / "webhook-sendgrid.pem").read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and public_key(private) == key


async def test_stats_by_tag_on_the_command_line(tmp_path, receiver, monkeypatch):
    gw = await deliver_five(tmp_path, {"format": "smtpgate", "events": ["delivered"]}, receiver, 1)
    await gw.stop()
    monkeypatch.setenv("SMTPGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["stats", "--by-tag"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["tag", "sent", "deliv"]
    assert [line.split()[:3] for line in lines[1:]] == [["onboarding", "1", "1"], ["welcome", "1", "1"]]


def test_the_config_knows_every_event_type_and_each_format_maps_only_real_ones():
    from typing import get_args

    from pipeline.config import WebhookEventType
    from pipeline.events import EVENT_TYPES
    from pipeline.events.webhook_formats import format_module

    assert set(get_args(WebhookEventType)) == set(EVENT_TYPES)
    for fmt in ("sendgrid", "mailgun", "postmark"):
        assert set(format_module(fmt).TYPES) <= set(EVENT_TYPES), fmt
