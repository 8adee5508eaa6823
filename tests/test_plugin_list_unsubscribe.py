"""list_unsubscribe: per-recipient RFC 8058 headers where the credential enables it, signed by DKIM,
and a working one-click URL."""

from __future__ import annotations

import re

import aiohttp
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.chain.driver import make_chain, run_chain, run_chain_async
from pipeline.config import ConfigError
from pipeline.contract.context import Credential
from pipeline.contract.message import Message
from plugins.dkim_sign import dns_txt_value
from tests.support import complete_message
from tests.support.tracking import signer, start_tracking, tracking_config

RAW = complete_message(
    sender="Shop <news@example.com>", to="ann@example.net", subject="Spring sale",
    extra="X-Campaign-Id: spring\r\n", body="Buy now.\r\n",
)
RCPTS = ["ann@example.net", "bob@example.net"]
SHOP = Credential("shop", features={"listunsubscribe": True})


def config(tmp_path, features=None, **plugin_cfg):
    over = {"tracking": {"bounce_domain": "bounce.example.com"}}
    if features:
        over["features"] = features
    if plugin_cfg:
        over["plugins"] = {"list_unsubscribe": plugin_cfg}
    return tracking_config(tmp_path / "data", over, plugins=["list_unsubscribe"])


def unsub_url(data: bytes) -> str:
    value = Message(data).get("List-Unsubscribe") or ""
    m = re.match(r"<(https://t\.example\.com/u/[^>]+)>", value)
    assert m, value
    return m.group(1)


def test_credential_with_list_unsubscribe_gets_both_headers_per_recipient(tmp_path):
    result = run_chain(RAW, config=config(tmp_path), rcpt_tos=RCPTS, credential=SHOP)
    assert len(result.copies) == 2
    tokens = []
    for copy in result.copies:
        msg = Message(copy.data)
        assert msg.get("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
        payload = signer().verify(unsub_url(copy.data).rsplit("/", 1)[1])
        assert payload is not None and payload["k"] == "u" and payload["r"] == copy.recipient
        assert payload["s"] == "shop" and payload["q"] == result.ctx.queue_id
        tokens.append(unsub_url(copy.data))
    assert tokens[0] != tokens[1]


def test_the_listunsubscribe_switch_is_off_by_default_and_on_per_credential_or_globally(tmp_path):
    result = run_chain(RAW, config=config(tmp_path), rcpt_tos=RCPTS, credential=Credential("blog"))
    assert all(b"List-Unsubscribe" not in c.data for c in result.copies)
    everyone = config(tmp_path, features={"listunsubscribe": True})
    result = run_chain(RAW, config=everyone, rcpt_tos=RCPTS, credential=Credential("blog"))
    assert all(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in c.data for c in result.copies)
    opted_out = Credential("quiet", features={"listunsubscribe": False})
    result = run_chain(RAW, config=everyone, rcpt_tos=RCPTS, credential=opted_out)
    assert all(b"List-Unsubscribe" not in c.data for c in result.copies)


def test_senders_own_header_is_kept_unless_replace(tmp_path):
    raw = RAW.replace(b"MIME-Version", b"List-Unsubscribe: <mailto:leave@example.com>\r\nMIME-Version")
    [copy] = run_chain(raw, config=config(tmp_path), rcpt_tos=RCPTS[:1], credential=SHOP).copies
    assert Message(copy.data).get_all("List-Unsubscribe") == ["<mailto:leave@example.com>"]
    [copy] = run_chain(raw, config=config(tmp_path, replace=True), rcpt_tos=RCPTS[:1], credential=SHOP).copies
    assert Message(copy.data).get_all("List-Unsubscribe") == [f"<{unsub_url(copy.data)}>"]


def test_mailto_option_adds_a_short_signed_address_at_the_bounce_domain(tmp_path):
    [copy] = run_chain(RAW, config=config(tmp_path, mailto=True), rcpt_tos=RCPTS[:1], credential=SHOP).copies
    value = Message(copy.data).get("List-Unsubscribe")
    m = re.search(r"<mailto:(unsub\+[^@]+)@bounce\.example\.com\?subject=unsubscribe>", value)
    assert m and len(m.group(1)) <= 64
    with pytest.raises(ConfigError, match="bounce_domain"):
        make_chain(tracking_config(tmp_path / "d2", {"plugins": {"list_unsubscribe": {"mailto": True}}},
                                   plugins=["list_unsubscribe"]))


def test_dkim_signs_list_unsubscribe_and_post(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "k.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    cfg = tracking_config(tmp_path / "data", {"plugins": {"dkim_sign": {
        "domains": {"example.com": {"selector": "s1", "key_file": str(key_file)}}}}},
        plugins=["list_unsubscribe", "dkim_sign"])
    [copy] = run_chain(RAW, config=cfg, rcpt_tos=RCPTS[:1], credential=SHOP).copies
    records = {b"s1._domainkey.example.com.": dns_txt_value(key).encode()}
    assert dkim.verify(copy.data, dnsfunc=lambda name, timeout=5: records.get(name, b""))
    sig = re.sub(r"\s+", "", Message(copy.data).get("DKIM-Signature") or "")
    signed = dict(p.split("=", 1) for p in sig.split(";") if p)["h"].lower().split(":")
    assert "list-unsubscribe" in signed and "list-unsubscribe-post" in signed


async def test_header_url_unsubscribes_over_real_http(tmp_path):
    cfg = config(tmp_path)
    result = await run_chain_async(RAW, make_chain(cfg), rcpt_tos=RCPTS[:1], credential=SHOP)
    url = unsub_url(result.copies[0].data).replace("https://t.example.com", "")
    gw, service = await start_tracking(cfg)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(service.url + url, data="List-Unsubscribe=One-Click", allow_redirects=False) as r:
                assert r.status == 200
        assert gw.events.is_suppressed("ann@example.net", "shop")
    finally:
        await gw.stop()
