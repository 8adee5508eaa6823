"""The console in a real headless chromium, as an operator uses it: sign in with a token (the
session cookie is ``Secure`` and the page is plain http://127.0.0.1, which chromium treats as a
secure context), find a message sent over SMTP by its recipient, open its timeline, hold and
release a queued message, add a suppression; then every page at 1280 px and at 390 px wide, with
a screenshot of each (under the test's tmp dir) and no horizontal overflow of the document."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.api.console.app import SESSION_COOKIE
from tests.support.cdp import Browser, Tab
from tests.support.console import TOML, console_gateway
from tests.support.waiting import wait_for

pytestmark = pytest.mark.browser  # drives the headless chromium

WIDTHS = (1280, 390)
OVERFLOW = """(() => {
  const e = document.scrollingElement;
  const wide = [...document.querySelectorAll('body *')].filter(x => x.getBoundingClientRect().right > e.clientWidth)
    .slice(0, 5).map(x => x.tagName + '.' + x.className + ' ' + Math.round(x.getBoundingClientRect().right));
  return [e.scrollWidth, e.clientWidth, wide];
})()"""


def dkim_toml(tmp_path: Path) -> str:
    """The console's gateway with DKIM signing, so the Domains page has a real (long) record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "dkim.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    return TOML.replace('plugins = ["header_validation", "campaign_tag"]',
                        'plugins = ["header_validation", "campaign_tag", "dkim_sign"]') + (
        '[plugins.dkim_sign]\ndefault_domain = "shop.example"\n'
        f'[plugins.dkim_sign.domains."shop.example"]\nselector = "s2026"\nkey_file = "{pem}"\n'
    )  # fmt: skip


async def text_of(tab: Tab, selector: str = "main") -> str:
    return await tab.evaluate(f"document.querySelector({json.dumps(selector)}).innerText")


async def check_layout(tab: Tab, name: str, shots: Path) -> None:
    """At each width: a screenshot, and the document is never wider than the window."""
    for width in WIDTHS:
        await tab.set_width(width)
        scroll_width, client_width, wide = await tab.evaluate(OVERFLOW)
        await tab.screenshot(shots / f"{name}-{width}.png")
        assert scroll_width <= client_width, (
            f"{name} overflows at {width} px: {scroll_width} > {client_width}: {wide}"
        )
    await tab.set_width(WIDTHS[0])


async def test_operator_signs_in_finds_a_message_holds_releases_and_suppresses_in_chromium(
    tmp_path: Path,
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with console_gateway(tmp_path / "gw", dkim_toml(tmp_path)) as run:
        await run.send("shop", "news@shop.example", "x@example.net", "Spring sale")
        await run.send("shop", "news@shop.example", "wait@example.net", "Please hold")
        await run.send("club", "info@club.example", "y@example.net", "Club night with a long subject " * 3)
        await wait_for(lambda: len(run.gw.events.events(type="accepted")) == 3)
        qids = {e.event.recipient: e.event.queue_id for e in run.gw.events.events(type="accepted")}
        base = run.api.url
        browser = await Browser.start(tmp_path / "profile", tmp_path / "chromium.log")
        try:
            tab = await browser.new_tab()
            await tab.set_width(WIDTHS[0])

            # signed out: the console sends the browser to the sign-in form
            await tab.goto(f"{base}/console/messages")
            assert (await tab.evaluate("location.pathname")) == "/console/sign-in"
            await check_layout(tab, "sign-in", shots)
            await tab.fill("#token", run.tokens["admin"])
            await tab.click("button[type=submit]")
            assert (await tab.evaluate("location.pathname")) == "/console/messages"
            cookies = (await tab.call("Network.getCookies", {"urls": [base + "/"]}))["cookies"]
            [session] = [c for c in cookies if c["name"] == SESSION_COOKIE]
            assert (session["secure"], session["httpOnly"], session["sameSite"]) == (True, True, "Strict")
            assert (await tab.evaluate("document.cookie")) == ""  # HttpOnly: no script sees it

            # find the message by its recipient: the search is a bookmarkable URL
            await tab.fill("#recipient", "X@example.net")
            await tab.click("form[role=search] button[type=submit]")
            assert (await tab.evaluate("location.search")).startswith("?recipient=X%40example.net")
            results = await text_of(tab, "#results + .scroll")
            assert (
                "x@example.net" in results and "Spring sale" in results and "wait@example.net" not in results
            )
            await check_layout(tab, "messages", shots)
            await tab.click(f"a[href='/console/messages/{qids['x@example.net']}']")
            timeline = await text_of(tab, ".timeline")
            assert "accepted" in timeline.lower() and "x@example.net" in timeline
            assert "Spring sale" in await text_of(tab)
            await check_layout(tab, "message", shots)

            # hold the other message from the queue page; then delivery starts and skips it
            await tab.goto(f"{base}/console/queue")
            await check_layout(tab, "queue", shots)
            await tab.click(f"button[aria-label='Hold {qids['wait@example.net']}']")
            assert "1 copy held" in await text_of(tab, ".flash")
            assert [r["state"] for r in run.gw.spool.show(qids["wait@example.net"])["recipients"]] == ["held"]
            await run.start_delivery()
            await wait_for(lambda: {e.event.recipient for e in run.gw.events.events(type="delivered")}
                           == {"x@example.net", "y@example.net"})  # fmt: skip
            assert run.gw.spool.show(qids["wait@example.net"]) is not None

            # the delivered message's timeline now ends with its delivery
            await tab.goto(f"{base}/console/messages/{qids['x@example.net']}")
            events = await tab.evaluate(
                "[...document.querySelectorAll('.timeline .etype')].map(e => e.textContent)"
            )
            assert events == ["accepted", "delivered"]

            # release the held one from its own page: it is delivered
            await tab.goto(f"{base}/console/messages/{qids['wait@example.net']}")
            assert "held" in await text_of(tab, "#queue + .scroll")
            await tab.click(f"button[aria-label='Release {qids['wait@example.net']}']")
            assert "1 copy released" in await text_of(tab, ".flash")
            await wait_for(lambda: len(run.gw.events.events(type="delivered")) == 3)

            # add a suppression with the form; it is listed and applies
            await tab.goto(f"{base}/console/suppressions")
            await tab.fill("#address", "Stop@Example.net")
            await tab.fill("#reason", "asked by phone")
            await tab.click("form.card button[type=submit]")
            assert "stop@example.net added" in await text_of(tab, ".flash")
            assert "asked by phone" in await text_of(tab, "#list-heading + .scroll")
            assert run.gw.events.is_suppressed("stop@example.net", "shop")
            await check_layout(tab, "suppressions", shots)

            for page in ("credentials", "webhooks", "domains", "stats"):
                await tab.goto(f"{base}/console/{page}")
                await check_layout(tab, page, shots)
            await tab.goto(f"{base}/console/domains")
            assert "s2026 (rsa)" in await text_of(tab)
            await tab.click("main table a")  # the domain's own page: its records (a long TXT value)
            assert (await tab.evaluate("location.pathname")) == "/console/domains/shop.example"
            domain = await text_of(tab)
            assert "s2026._domainkey.shop.example" in domain and "v=DKIM1; k=rsa; p=" in domain
            await check_layout(tab, "domain", shots)
            await tab.goto(f"{base}/console/stats")
            assert "spring" in await text_of(tab)

            # the tracking listener's own /stats page (script-rendered) fits both widths too
            tracking = run.gw.tracking_service(port=0)
            await tracking.start()
            run.gw.services.append(tracking)
            await tab.goto(f"{tracking.url}/stats")
            assert await tab.evaluate("document.body.dataset.rendered") == "1"
            await check_layout(tab, "tracking-stats", shots)
            await tab.goto(f"{base}/console/stats")

            # keyboard users see where they are: the focused control has a visible outline
            outline = await tab.evaluate(
                "(() => { const b = document.querySelector('form.search button'); b.focus();"
                " return getComputedStyle(b).outlineStyle; })()"
            )
            assert outline != "none"

            # sign out: the cookie is gone and the console asks for a token again
            await tab.click("form.signout button")
            assert (await tab.evaluate("location.pathname")) == "/console/sign-in"
            await tab.goto(f"{base}/console/queue")
            assert (await tab.evaluate("location.pathname")) == "/console/sign-in"
        finally:
            await asyncio.shield(browser.close())
    print(f"screenshots: {shots}")
    assert sorted(p.name for p in shots.iterdir()) == sorted(
        f"{n}-{w}.png" for n in ("sign-in", "messages", "message", "queue", "suppressions", "credentials", "webhooks",
                                 "domains", "domain", "stats", "tracking-stats") for w in WIDTHS)  # fmt: skip
