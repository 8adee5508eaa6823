"""The suppression plugin: RCPT to a stoplisted address gets Sendsay's reply, over real SMTP."""

from __future__ import annotations

import aiohttp
import pytest

from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_chain
from pipeline.contract.context import Credential, Event, Session, Transaction
from pipeline.contract.verdicts import Reject, TempFail
from pipeline.contract.vocabulary import EventType
from pipeline.events import open_suppression_list
from tests.support.tracking import rcpt_reply, signer, tracking_config

STOPLIST = "550 5.0.0 Email is in the account stoplist"
PERMANENT = "550 5.0.0 Email has permanent delivery errors"


def smtp_config(data_dir, **overrides):
    base = {
        "listeners": [{"name": "plain", "port": 0, "tls": "none", "require_tls": False}],
        "credentials": [
            {"name": "shop", "username": "shop", "secret": "pw-shop"},
            {"name": "blog", "username": "blog", "secret": "pw-blog"},
        ],
    }
    base.update(overrides)
    return tracking_config(data_dir, base, plugins=["suppression"])


async def test_one_click_unsubscribe_then_next_rcpt_gets_stoplist_reply(tmp_path):
    gw = Gateway(smtp_config(tmp_path / "data"))
    ingress = gw.ingress_service()
    gw.services = [ingress, *gw.tracking_services()]
    gw.services[1].requested_port = 0
    await gw.start()
    try:
        port, web = ingress.port("plain"), gw.services[1].url
        assert (await rcpt_reply(port, "shop", "pw-shop", "dana@example.net")).startswith("250")
        token = signer().sign({"k": "u", "q": "Q1", "r": "dana@example.net", "s": "shop"})
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{web}/u/{token}", data="List-Unsubscribe=One-Click", allow_redirects=False) as r:
                assert r.status == 200
        assert await rcpt_reply(port, "shop", "pw-shop", "Dana@Example.net") == STOPLIST
        # per-credential scope (the default): another account may still write to the address
        assert (await rcpt_reply(port, "blog", "pw-blog", "dana@example.net")).startswith("250")
    finally:
        await gw.stop()


async def test_global_suppression_applies_to_every_credential(tmp_path):
    gw = Gateway(smtp_config(tmp_path / "data"))
    ingress = gw.ingress_service()
    gw.services = [ingress]
    await gw.start()
    try:
        gw.events.suppress("blocked@example.net")  # global scope, as `smtpgate suppression add` does
        for user in ("shop", "blog"):
            assert await rcpt_reply(ingress.port("plain"), user, f"pw-{user}", "blocked@example.net") == STOPLIST
    finally:
        await gw.stop()


async def test_an_address_that_bounced_hard_gets_sendsays_permanent_errors_reply(tmp_path):
    """Sendsay's two RCPT texts: a hard bounce says the address is broken, an unsubscribe says stoplist."""
    gw = Gateway(smtp_config(tmp_path / "data"))
    ingress = gw.ingress_service()
    gw.services = [ingress]
    await gw.start()
    try:
        await gw.emit(Event(EventType.BOUNCED, queue_id="Q1", recipient="gone@example.net", credential="shop",
                            data={"dsn": "5.1.1", "reply": "550 5.1.1 no such user"}), strict=True)
        await gw.emit(Event(EventType.UNSUBSCRIBED, queue_id="Q2", recipient="left@example.net",
                            credential="shop"), strict=True)
        gw.events.suppress("gone@example.net", "shop", reason="manual")  # a second entry: hard bounce wins
        port = ingress.port("plain")
        assert await rcpt_reply(port, "shop", "pw-shop", "gone@example.net") == PERMANENT
        assert await rcpt_reply(port, "shop", "pw-shop", "left@example.net") == STOPLIST
        assert (await rcpt_reply(port, "shop", "pw-shop", "fine@example.net")).startswith("250")
    finally:
        await gw.stop()


async def run_rcpt(chain, address: str, credential: str | None = "shop"):
    session = Session(credential=Credential(credential) if credential else None)
    return await chain.run("on_rcpt_to", session=session, transaction=Transaction(), address=address)


async def test_plugin_rejects_only_suppressed_addresses(tmp_path):
    config = tracking_config(tmp_path / "data", plugins=["suppression"])
    gw = Gateway(config)
    gw.events.suppress("x@example.net", "shop")
    chain = gw.chain  # the composition root hands the plugin the stoplist port (env.suppression)
    verdict = await run_rcpt(chain, "X@example.net")
    assert isinstance(verdict, Reject) and verdict.reply() == STOPLIST
    assert await run_rcpt(chain, "y@example.net") is None
    assert await run_rcpt(chain, "x@example.net", credential="blog") is None
    assert await run_rcpt(chain, "x@example.net", credential=None) is None
    await gw.stop()


async def test_unreadable_stoplist_fails_closed_with_tempfail(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.db").write_bytes(b"this is not a sqlite database" * 100)
    chain = make_chain(tracking_config(data, plugins=["suppression"]),
                       open_suppression=lambda: open_suppression_list(data))
    verdict = await run_rcpt(chain, "x@example.net")
    assert isinstance(verdict, TempFail) and verdict.code == 451


async def test_a_chain_given_no_stoplist_fails_closed(tmp_path, caplog):
    """A chain built without the suppression port must not accept blindly."""
    chain = make_chain(tracking_config(tmp_path / "data", plugins=["suppression"]), open_suppression=None)
    verdict = await run_rcpt(chain, "x@example.net")
    assert isinstance(verdict, TempFail) and verdict.code == 451
    assert "no suppression list in this environment" in caplog.text


def test_reply_text_is_configurable_but_code_stays(tmp_path):
    config = tracking_config(tmp_path / "data", {"plugins": {"suppression": {"text": "Address unsubscribed"}}},
                             plugins=["suppression"])
    chain = make_chain(config)
    plugin = chain.plugins.plugins[0].instance
    assert plugin.reply.reply() == "550 5.0.0 Address unsubscribed"
    with pytest.raises(Exception, match="one line"):
        make_chain(tracking_config(tmp_path / "d2", {"plugins": {"suppression": {"text": "a\nb"}}},
                                   plugins=["suppression"]))
