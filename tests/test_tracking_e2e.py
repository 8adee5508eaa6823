"""End to end in one gateway: SMTP in -> click tracking, pixel, List-Unsubscribe -> maildir; then
the recipient clicks, opens and unsubscribes over HTTP, and the statistics and the stoplist say so."""

from __future__ import annotations

import asyncio
import html
import re

import aiohttp
import aiosmtplib

from pipeline.accounts.api_tokens import ApiTokenStore
from pipeline.app.gateway import Gateway
from pipeline.contract.message import Message
from pipeline.events.stats import campaign_stats
from tests.support.tracking import HUMAN_UA, tracking_config

RAW = (
    "Message-Id: <e2e-1@shop.example>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
    "From: Shop <news@shop.example>\r\nTo: ann@example.net\r\nSubject: Spring sale\r\n"
    "X-Campaign-Id: spring\r\nX-Letter-Id: order-77\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n"
    '<html><body><p>Hello</p><a href="https://shop.example/sale?a=1&amp;b=2">Sale</a></body></html>\r\n'
)


async def wait_until(pred, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def test_mail_through_the_gateway_then_click_open_unsubscribe_show_in_stats(tmp_path):
    config = tracking_config(tmp_path / "data", {
        "listeners": [{"name": "plain", "port": 0, "tls": "none", "require_tls": False}],
        "credentials": [{"name": "shop", "username": "shop", "secret": "pw-shop",
                         "features": {"listunsubscribe": True}}],
        "spool": {"workers": 0, "retry_min": 0.05, "poll_interval": 0.05},
        "egress": {"type": "maildir"},
        # the copy is delivered a moment before the "recipient" clicks: switch the too-soon rule off
        "tracking": {"machine_seconds": 0.0},
    }, plugins=["header_validation", "campaign_tag", "suppression", "click_tracking", "open_pixel",
                "list_unsubscribe"])
    gw = Gateway(config)
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, gw.delivery_service(workers=0), *gw.tracking_services(), api]
    tokens = ApiTokenStore(config.data_dir / "credentials.db")
    token = tokens.add("shop-console", "shop")
    tokens.close()
    await gw.start()
    try:
        web = gw.services[2].url
        await aiosmtplib.send(RAW.encode(), sender="news@shop.example", recipients=["ann@example.net"],
                              hostname="127.0.0.1", port=ingress.port("plain"), username="shop",
                              password="pw-shop", start_tls=False, use_tls=False)
        await wait_until(lambda: gw.events.events(type="delivered") != [])
        [delivered] = gw.events.events(type="delivered")
        assert (delivered.event.campaign_id, delivered.event.letter_id) == ("spring", "order-77")

        [path] = [p for p in (config.data_dir / "maildir" / "new").iterdir()]
        msg = Message(path.read_bytes())
        body = msg.html_parts()[0].text()
        click = html.unescape(re.search(r'href="([^"]+/c/[^"]+)"', body).group(1))
        pixel = html.unescape(re.search(r'src="([^"]+/o/[^"]+\.gif)"', body).group(1))
        unsub = re.match(r"<([^>]+)>", msg.get("List-Unsubscribe")).group(1)
        assert msg.get("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"

        def local(url: str) -> str:
            return web + url[url.index("/", len("https://")):]

        async with aiohttp.ClientSession(headers={"User-Agent": HUMAN_UA}) as http:
            async with http.get(local(click), allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "https://shop.example/sale?a=1&b=2"
            async with http.get(local(pixel)) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "image/gif"
            async with http.post(local(unsub), data="List-Unsubscribe=One-Click", allow_redirects=False) as r:
                assert r.status == 200

        [row] = campaign_stats(gw.events, campaign="spring")
        assert (row["sent"], row["delivered"], row["unique_clicks"], row["unsubscribes"]) == (1, 1, 1, 1)
        assert (row["opens"], row["unique_opens"], row["clicks"]) == (1, 1, 1)
        assert gw.events.is_suppressed("ann@example.net", "shop")
        # the message's story in the management API: accepted, delivered, then what the recipient did
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(api.url + "/api/v1/messages", params={"recipient": "ann@example.net"}) as r:
                [found] = (await r.json())["messages"]
            async with http.get(api.url + f"/api/v1/messages/{found['queue_id']}") as r:
                story = await r.json()
        assert [e["type"] for e in story["events"]] == ["accepted", "delivered", "clicked", "opened", "unsubscribed"]
        assert story["events"][2]["url"] == "https://shop.example/sale?a=1&b=2"
        assert (story["campaign_id"], story["subject"]) == ("spring", "Spring sale")
        processing = story["recipients"][0]["processing"]  # the chain after the spool, hook by hook
        assert {"click_tracking", "open_pixel", "list_unsubscribe"} <= {t["plugin"] for t in processing}
        assert any("List-Unsubscribe" in edit for t in processing for edit in t["edits"])
        assert any(name == "List-Unsubscribe" for name, _ in story["recipients"][0]["final_headers"])

        # and the next message to ann from this credential is refused at RCPT
        try:
            await aiosmtplib.send(RAW.encode(), sender="news@shop.example", recipients=["ann@example.net"],
                                  hostname="127.0.0.1", port=ingress.port("plain"), username="shop",
                                  password="pw-shop", start_tls=False, use_tls=False)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            [refusal] = exc.recipients
            assert (refusal.code, refusal.message) == (550, "5.0.0 Email is in the account stoplist")
        else:
            raise AssertionError("the suppressed recipient was accepted")
    finally:
        await gw.stop()
