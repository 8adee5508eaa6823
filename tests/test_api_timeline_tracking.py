"""Issue 12's acceptance, to the end: a message sent over SMTP to x@example.net is found by its
recipient, and after its tracking URLs are fetched its timeline shows ``opened`` and ``clicked``
after ``accepted`` and ``delivered`` (the API and the CLI twin alike), on both storage backends."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib

from tests.support.console import TOML, console_gateway, on_storage
from tests.support.waiting import wait_for
from tests.test_api import cli

HTML_MAIL = (
    b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nFrom: <news@shop.example>\r\nTo: <x@example.net>\r\n"
    b"Subject: Spring sale\r\nX-Campaign-Id: spring\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b'<html><body><p><a href="https://shop.example/sale?a=1&amp;b=2">Sale</a></p></body></html>\r\n'
)


async def test_the_timeline_shows_accepted_delivered_then_opened_and_clicked(tmp_path: Path, backend: Any) -> None:
    toml = TOML.replace(
        'plugins = ["header_validation", "campaign_tag"]',
        'plugins = ["header_validation", "campaign_tag", "click_tracking", "open_pixel"]',
    ) + '[tracking]\nlisten_port = 0\nbase_url = "https://t.example.com"\n[tracking.keys]\nk1 = "timeline-key"\n'
    async with console_gateway(tmp_path, on_storage(toml, backend.url)) as run:
        tracking = run.gw.tracking_service(port=0)
        await tracking.start()
        run.gw.services.append(tracking)
        await aiosmtplib.send(HTML_MAIL, sender="news@shop.example", recipients=["x@example.net"],
                              hostname="127.0.0.1", port=run.ingress.port("plain"), username="shop",
                              password="pw-shop", start_tls=False, use_tls=False)  # fmt: skip
        await run.start_delivery()
        await wait_for(lambda: len(run.gw.events.events(type="delivered")) == 1)

        # the copy as it left: its tracked link and pixel, fetched as a reader's client would
        [path] = list((tmp_path / "data" / "maildir" / "new").iterdir())
        html = email.message_from_bytes(path.read_bytes(), policy=email.policy.default).get_body(("html",))
        assert html is not None
        urls = re.findall(r'(?:href|src)="(https://t\.example\.com/[^"]+)"', html.get_content())
        assert len(urls) == 2, urls
        headers = {"Authorization": f"Bearer {run.tokens['shop']}"}
        async with aiohttp.ClientSession() as http:
            for url in urls:
                parts = urlsplit(url.replace("&amp;", "&"))
                async with http.get(f"{tracking.url}{parts.path}?{parts.query}", allow_redirects=False,
                                    headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}) as r:  # fmt: skip
                    assert r.status in (200, 302), (url, r.status)
                    if r.status == 302:
                        assert r.headers["Location"] == "https://shop.example/sale?a=1&b=2"
            await wait_for(lambda: len(run.gw.events.events(type="clicked")) == 1
                           and len(run.gw.events.events(type="opened")) == 1)  # fmt: skip

            async with http.get(f"{run.api.url}/api/v1/messages", params={"recipient": "x@example.net"},
                                headers=headers) as r:  # fmt: skip
                [found] = (await r.json())["messages"]
            async with http.get(f"{run.api.url}/api/v1/messages/{found['queue_id']}", headers=headers) as r:
                story = await r.json()
        types = [e["type"] for e in story["events"]]
        assert types[:2] == ["accepted", "delivered"] and sorted(types[2:]) == ["clicked", "opened"], types
        assert all(e["recipient"] == "x@example.net" for e in story["events"][1:])
        assert any(t["plugin"] == "click_tracking" for t in story["recipients"][0]["processing"])

        shown = cli("messages", "show", found["queue_id"], "--config", str(tmp_path / "smtpgate.toml"))
        assert shown.exit_code == 0
        assert all(f" {t} " in shown.stdout for t in ("accepted", "delivered", "opened", "clicked")), shown.stdout
