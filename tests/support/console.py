"""A real gateway with the console for the console's tests: two tenants (``shop``, ``club``) and an
administrator, each with an API token; SMTP ingress on an ephemeral port, the API listener on
another; delivery is started by the test when it wants messages to leave the queue."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import aiosmtplib

from pipeline.accounts.api_tokens import ApiTokenStore, open_api_token_store
from pipeline.api import ApiService
from pipeline.app.gateway import Gateway
from pipeline.config import load_config
from pipeline.ingress import IngressService

TOML = """
[gateway]
hostname = "gw.test"
data_dir = "{data}"
[[listeners]]
name = "plain"
port = 0
tls = "none"
require_tls = false
[chain]
plugins = ["header_validation", "campaign_tag"]
[spool]
workers = 0
retry_min = 0.05
poll_interval = 0.05
[egress]
type = "maildir"
[api]
listen_port = 0
[limits]
shutdown_grace = 2.0
[[credentials]]
name = "shop"
username = "shop"
secret = "pw-shop"
[[credentials]]
name = "club"
username = "club"
secret = "pw-club"
"""

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def mail(sender: str, to: str, subject: str, campaign: str = "spring") -> bytes:
    return (
        f"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nFrom: <{sender}>\r\nTo: <{to}>\r\n"
        f"Subject: {subject}\r\nX-Campaign-Id: {campaign}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
    ).encode()


@dataclass
class Running:
    gw: Gateway
    ingress: IngressService
    api: ApiService
    tokens: dict[str, str]
    store: ApiTokenStore

    async def send(self, user: str, sender: str, to: str, subject: str, campaign: str = "spring") -> None:
        """One message over real SMTP with AUTH as ``user`` (password ``pw-<user>``)."""
        await aiosmtplib.send(
            mail(sender, to, subject, campaign),
            sender=sender,
            recipients=[to],
            hostname="127.0.0.1",
            port=self.ingress.port("plain"),
            username=user,
            password=f"pw-{user}",
            start_tls=False,
            use_tls=False,
        )

    async def start_delivery(self) -> None:
        delivery = self.gw.delivery_service(workers=0)
        await delivery.start()
        self.gw.services.append(delivery)


def on_storage(toml: str, url: str | None) -> str:
    """``toml`` with ``[storage] url`` when given (a ``backend`` fixture's PostgreSQL), else unchanged."""
    return toml + f'[storage]\nurl = "{url}"\n' if url else toml


@asynccontextmanager
async def console_gateway(tmp_path: Path, toml: str = TOML) -> AsyncIterator[Running]:
    """Ingress and API (with the console) started; no delivery: messages stay queued."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(toml.format(data=tmp_path / "data"))
    config = load_config(str(conf))
    gw = Gateway(config)
    store = open_api_token_store(config.storage.url, config.data_dir)  # the gateway's own token store
    tokens = {
        "admin": store.add("admin"),
        "shop": store.add("shop-token", "shop"),
        "club": store.add("club-token", "club"),
    }
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, api]
    await gw.start()
    try:
        yield Running(gw, ingress, api, tokens, store)
    finally:
        await gw.stop(2.0)
        store.close()


@dataclass
class Visitor:
    """An HTTP client that keeps cookies itself (as a browser does for 127.0.0.1), so a test sees
    and checks every ``Set-Cookie`` and sends exactly the cookies it holds."""

    http: aiohttp.ClientSession
    base: str
    cookies: dict[str, str] = field(default_factory=dict)
    set_cookies: list[SimpleCookie] = field(default_factory=list)

    async def request(
        self,
        method: str,
        path: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[aiohttp.ClientResponse, str]:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        hdrs = {**({"Cookie": cookie} if cookie else {}), **(headers or {})}
        async with self.http.request(
            method, self.base + path, data=data, headers=hdrs, allow_redirects=False
        ) as resp:
            text = await resp.text()
            for raw in resp.headers.getall("Set-Cookie", []):
                parsed = SimpleCookie()
                parsed.load(raw)
                self.set_cookies.append(parsed)
                for name, morsel in parsed.items():
                    if morsel["max-age"] == "0" or morsel.value == "":
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            return resp, text

    async def get(self, path: str) -> tuple[aiohttp.ClientResponse, str]:
        return await self.request("GET", path)

    async def post(
        self, path: str, data: dict[str, str], **headers: str
    ) -> tuple[aiohttp.ClientResponse, str]:
        return await self.request("POST", path, data=data, headers=headers)

    async def sign_in(self, token: str) -> aiohttp.ClientResponse:
        _, form = await self.get("/console/sign-in")
        resp, _ = await self.post(
            "/console/sign-in", {"csrf": csrf_of(form), "token": token, "next": "/console/messages"}
        )
        return resp


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the form"
    return found.group(1)


@asynccontextmanager
async def visitor(base: str) -> AsyncIterator[Visitor]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield Visitor(http, base)
