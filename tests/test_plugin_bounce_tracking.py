"""bounce_tracking: VERP envelope sender per copy, and the round trip back through the handler."""

from __future__ import annotations

import pytest

from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_chain, run_chain, run_chain_async
from pipeline.config import ConfigError
from pipeline.contract.context import Credential, Event
from pipeline.events import parse_verp, recipient_hash
from tests.support import complete_message
from tests.support.bounces import dsn
from tests.support.tracking import signer, tracking_config

DOMAIN = "bounce.example.com"
RAW = complete_message(sender="news@example.com", to="ann@example.net", subject="hi", content_type="text/plain", body="hello\r\n")
RCPTS = ["ann@example.net", "Bob@Example.net"]


def config(tmp_path, trackbounces: bool = True, domain: str | None = DOMAIN):
    over = {"features": {"trackbounces": trackbounces}, "tracking": {"bounce_domain": domain}}
    return tracking_config(tmp_path / "data", over, plugins=["bounce_tracking"])


def test_each_copy_gets_its_own_signed_verp_sender(tmp_path):
    result = run_chain(RAW, config=config(tmp_path), mail_from="news@example.com", rcpt_tos=RCPTS)
    senders = [c.mail_from for c in result.copies]
    assert len(set(senders)) == 2
    for copy in result.copies:
        local, _, domain = copy.mail_from.rpartition("@")
        assert domain == DOMAIN and local.startswith("bounces+") and len(local) <= 64
        token = parse_verp(signer(), local)
        assert token is not None and token.kind == "b" and token.queue_id == result.ctx.queue_id
        assert token.rcpt_hash == recipient_hash(copy.recipient)
    edits = [e for entry in result.trace.entries for e in entry.edits if e.plugin == "bounce_tracking"]
    assert [e.action for e in edits] == ["change_sender", "change_sender"]


def test_feature_off_or_null_sender_leaves_the_envelope_alone(tmp_path):
    result = run_chain(RAW, config=config(tmp_path, trackbounces=False), mail_from="news@example.com", rcpt_tos=RCPTS)
    assert [c.mail_from for c in result.copies] == ["news@example.com"] * 2
    result = run_chain(RAW, config=config(tmp_path), mail_from="", rcpt_tos=RCPTS)
    assert [c.mail_from for c in result.copies] == ["", ""]


def test_credential_can_switch_it_on(tmp_path):
    cred = Credential("shop", features={"trackbounces": True})
    result = run_chain(RAW, config=config(tmp_path, trackbounces=False), mail_from="news@example.com",
                       rcpt_tos=RCPTS[:1], credential=cred)
    assert result.copies[0].mail_from.endswith("@" + DOMAIN)


def test_enabled_by_default_without_a_bounce_domain_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="bounce_domain"):
        make_chain(config(tmp_path, domain=None))
    with pytest.raises(ConfigError, match="not a domain name"):
        make_chain(config(tmp_path, domain="not a domain"))


def test_requested_without_a_bounce_domain_is_refused_at_data_not_queued(tmp_path):
    cred = Credential("shop", features={"trackbounces": True})
    result = run_chain(RAW, config=config(tmp_path, trackbounces=False, domain=None), mail_from="news@example.com",
                       rcpt_tos=RCPTS[:1], credential=cred)
    assert result.verdict is not None
    assert result.verdict.reply() == "554 5.3.5 Bounce tracking is not configured on this gateway (no bounce domain)"
    assert result.copies == []
    header = RAW.replace(b"Subject:", b"X-SMTPeter-TrackBounces: true\r\nSubject:", 1)
    result = run_chain(header, config=config(tmp_path, trackbounces=False, domain=None), mail_from="news@example.com",
                       rcpt_tos=RCPTS[:1])
    assert result.verdict is not None and result.verdict.reply().startswith("554 5.3.5 ")
    # a null sender is never tracked, so nothing is missing for it
    result = run_chain(RAW, config=config(tmp_path, trackbounces=False, domain=None), mail_from="",
                       rcpt_tos=RCPTS[:1], credential=cred)
    assert result.verdict is None and result.copies[0].deliverable


async def test_bounce_to_the_rewritten_sender_is_tied_to_queue_id_and_recipient(tmp_path):
    cfg = config(tmp_path)
    result = await run_chain_async(RAW, make_chain(cfg), mail_from="news@example.com", rcpt_tos=RCPTS)
    gw = Gateway(cfg)
    try:
        for r in RCPTS:  # what the ingress records at acceptance
            await gw.emit(Event("accepted", queue_id=result.ctx.queue_id, recipient=r, credential="shop"))
        bob = result.copies[1]
        await gw.inbound_handlers[DOMAIN]("", [bob.mail_from], dsn(bob.mail_from, "bob@example.net", "5.1.1"))
        [bounce] = gw.events.events(type="bounced")
        assert (bounce.event.queue_id, bounce.event.recipient) == (result.ctx.queue_id, "bob@example.net")
        assert gw.events.is_suppressed("bob@example.net", "shop")
        assert not gw.events.is_suppressed("ann@example.net", "shop")
    finally:
        await gw.stop()
