"""The tracking HTTP service over real HTTP (aiohttp client, no redirects followed)."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.contract.context import Event
from pipeline.toolkit.tokens import TokenSigner
from tests.support.tracking import HUMAN_UA, signer, start_tracking, tracking_config

URLS = [
    "https://example.com/",
    "https://example.com/path?a=1&b=2&amp;c=3#frag",
    "http://shop.example.org/p/%E2%82%AC?utm_source=mail&x=%20y",
    "https://example.com/a/b/../c?q=hello+world&empty=",
    "https://example.com/unicode/café?name=Zoë",
]


@pytest.fixture
async def tracking(tmp_path):
    gw, service = await start_tracking(tracking_config(tmp_path / "data"))
    async with aiohttp.ClientSession(headers={"User-Agent": HUMAN_UA}) as session:
        yield gw, service, session
    await gw.stop()


def click_token(url: str, **extra: str) -> str:
    return signer().sign({"k": "c", "u": url, "q": "Q1", "r": "ann@example.net", "c": "spring", "l": "L-1", **extra})


async def get(session, url: str, **kw):
    async with session.get(url, allow_redirects=False, **kw) as resp:
        return resp.status, resp.headers, await resp.read()


LOCATIONS = {  # RFC 3986 on the wire: what a browser requests for the same href
    "https://example.com/unicode/café?name=Zoë": "https://example.com/unicode/caf%C3%A9?name=Zo%C3%AB",
    "https://bücher.example/straße?q=ü#größe": "https://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%BC#gr%C3%B6%C3%9Fe",
    "https://例え.jp/パス?x=%E2%82%AC&y=€": "https://xn--r8jz45g.jp/%E3%83%91%E3%82%B9?x=%E2%82%AC&y=%E2%82%AC",
}


@pytest.mark.parametrize("url", URLS + list(LOCATIONS)[1:])
async def test_valid_click_redirects_to_exact_original_url_and_records_click(tracking, url):
    gw, service, session = tracking
    status, headers, _ = await get(session, f"{service.url}/c/{click_token(url)}")
    assert status == 302
    assert headers["Location"] == LOCATIONS.get(url, url)
    assert headers["Location"].isascii()
    [stored] = gw.events.events(type="clicked")
    assert stored.event.url == url
    assert (stored.event.queue_id, stored.event.recipient, stored.event.campaign_id) == ("Q1", "ann@example.net", "spring")
    assert stored.event.letter_id == "L-1" and stored.machine is False


def _tamper_url(token: str) -> str:
    """The payload is encrypted, so "change the URL" means change ciphertext bytes."""
    body, kid, mac = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}.{kid}.{mac}"


def _flip_signature(token: str) -> str:
    body, kid, mac = token.split(".")
    mac = ("A" if mac[0] != "A" else "B") + mac[1:]
    return f"{body}.{kid}.{mac}"


TAMPERS = {
    "url changed": _tamper_url,
    "signature changed": _flip_signature,
    "truncated mac": lambda t: t[:-3],
    "truncated to payload": lambda t: t.split(".")[0],
    "truncated mid payload": lambda t: t[: len(t) // 2],
    "other key same id": lambda t: TokenSigner({"k1": b"another-secret"}, "k1").sign(
        {"k": "c", "u": "https://evil.example/"}
    ),
    "unknown key id": lambda t: TokenSigner({"k9": b"whatever"}, "k9").sign({"k": "c", "u": "https://evil.example/"}),
    "open token as click": lambda t: signer().sign({"k": "o", "u": "https://evil.example/"}),
    "javascript url signed": lambda t: signer().sign({"k": "c", "u": "javascript:alert(1)"}),
    "garbage": lambda t: "not-a-token",
}


@pytest.mark.parametrize("tamper", list(TAMPERS), ids=list(TAMPERS))
async def test_tampered_click_token_gets_404_page_never_a_redirect(tracking, tamper):
    gw, service, session = tracking
    token = TAMPERS[tamper](click_token("https://example.com/real"))
    status, headers, body = await get(session, f"{service.url}/c/{token}")
    assert status == 404
    assert "Location" not in headers
    assert b"Link not found" in body
    assert gw.events.events(type="clicked") == []


async def test_pixel_returns_gif_with_no_store_and_records_open(tracking):
    gw, service, session = tracking
    token = signer().sign({"k": "o", "q": "Q2", "r": "bob@example.net", "c": "spring"})
    status, headers, body = await get(session, f"{service.url}/o/{token}.gif")
    assert status == 200
    assert headers["Content-Type"] == "image/gif"
    assert "no-store" in headers["Cache-Control"]
    assert body.startswith(b"GIF89a") and len(body) == 43
    assert body[6:10] == b"\x01\x00\x01\x00" and body.endswith(b";")  # logical screen 1x1, a complete GIF
    [opened] = gw.events.events(type="opened")
    assert (opened.event.queue_id, opened.event.recipient, opened.machine) == ("Q2", "bob@example.net", False)


@pytest.mark.parametrize("token", ["garbage", "a.k1.b", "click"])
async def test_bad_open_token_still_gets_the_gif_and_records_nothing(tracking, token):
    gw, service, session = tracking
    if token == "click":
        token = click_token("https://example.com/")  # a genuine token of the wrong kind
    status, headers, body = await get(session, f"{service.url}/o/{token}.gif")
    assert status == 200 and body.startswith(b"GIF89a") and "no-store" in headers["Cache-Control"]
    assert gw.events.events() == []


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
        "Mozilla/5.0",
        "Barracuda Sentinel (EE)",
        "",
    ],
)
async def test_proxy_and_scanner_user_agents_are_flagged_as_machine(tracking, agent):
    gw, service, session = tracking
    token = signer().sign({"k": "o", "q": "Q3", "r": "cy@example.net"})
    await get(session, f"{service.url}/o/{token}.gif", headers={"User-Agent": agent})
    [opened] = gw.events.events(type="opened")
    assert opened.machine is True
    assert opened.event.data["machine_reason"] == "user agent"


async def test_click_within_seconds_of_delivery_is_machine_later_click_is_human(tracking):
    gw, service, session = tracking
    await gw.emit(Event("delivered", queue_id="Q1", recipient="ann@example.net", campaign_id="spring"))
    await get(session, f"{service.url}/c/{click_token('https://example.com/x')}")
    await gw.emit(
        Event("delivered", queue_id="Q9", recipient="ann@example.net", campaign_id="spring", time=time.time() - 60)
    )
    token = signer().sign({"k": "c", "u": "https://example.com/y", "q": "Q9", "r": "ann@example.net", "c": "spring"})
    await get(session, f"{service.url}/c/{token}")
    first, second = gw.events.events(type="clicked")
    assert first.machine is True and first.event.data["machine_reason"] == "too soon"
    assert second.machine is False


def unsub_token(rcpt: str = "dana@example.net", cred: str = "shop") -> str:
    return signer().sign({"k": "u", "q": "Q4", "r": rcpt, "c": "spring", "s": cred})


async def test_unsubscribe_get_shows_confirmation_with_button_and_changes_nothing(tracking):
    gw, service, session = tracking
    status, headers, body = await get(session, f"{service.url}/u/{unsub_token()}")
    assert status == 200 and "Location" not in headers
    assert b"<button" in body and b'method="post"' in body and b"dana@example.net" in body
    assert gw.events.events() == []
    assert not gw.events.is_suppressed("dana@example.net", "shop")


async def test_one_click_unsubscribe_post_suppresses_and_never_redirects(tracking):
    gw, service, session = tracking
    async with session.post(
        f"{service.url}/u/{unsub_token()}", data="List-Unsubscribe=One-Click", allow_redirects=False,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        assert resp.status == 200
        assert "Location" not in resp.headers
        assert "unsubscribed" in (await resp.text())
    [event] = gw.events.events(type="unsubscribed")
    assert (event.event.recipient, event.event.credential) == ("dana@example.net", "shop")
    assert gw.events.is_suppressed("Dana@Example.NET", "shop")
    assert not gw.events.is_suppressed("dana@example.net", "other-credential")  # scope: credential


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bad_unsubscribe_token_gets_404(tracking, method):
    gw, service, session = tracking
    token = _flip_signature(unsub_token())
    async with session.request(method, f"{service.url}/u/{token}", allow_redirects=False) as resp:
        assert resp.status == 404 and "Location" not in resp.headers
    assert gw.events.events() == []


async def test_healthz_and_metrics_have_bounded_labels_without_campaign_ids(tracking):
    gw, service, session = tracking
    await get(session, f"{service.url}/c/{click_token('https://example.com/', c='secret-campaign-42')}")
    await get(session, f"{service.url}/c/garbage")
    await gw.emit(Event("weird-type-from-a-plugin", campaign_id="secret-campaign-42"))
    status, _, body = await get(session, f"{service.url}/healthz")
    assert status == 200 and body == b"ok\n"
    status, headers, body = await get(session, f"{service.url}/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'smtpgate_events_total{type="clicked"} 1.0' in text
    assert 'smtpgate_events_total{type="other"} 1.0' in text
    assert 'smtpgate_http_requests_total{handler="click",status="302"} 1.0' in text
    assert 'smtpgate_http_requests_total{handler="click",status="404"} 1.0' in text
    assert "secret-campaign-42" not in text and "weird-type" not in text
    families = {f.name for f in text_string_to_metric_families(text)}  # the whole page parses
    assert {"smtpgate_events", "smtpgate_queue_recipients", "smtpgate_delivery_latency_seconds"} <= families


async def test_admin_endpoints_refuse_outside_networks_and_require_the_token(tmp_path):
    config = tracking_config(tmp_path / "d1", {"tracking": {"admin_networks": ["10.0.0.0/8"]}})
    gw, service = await start_tracking(config)
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/metrics", "/api/stats", "/stats"):
                assert (await get(session, service.url + path))[0] == 403
            assert (await get(session, service.url + "/healthz"))[0] == 200
    finally:
        await gw.stop()
    gw, service = await start_tracking(tracking_config(tmp_path / "d2", {"tracking": {"admin_token": "s3cret"}}))
    try:
        async with aiohttp.ClientSession() as session:
            assert (await get(session, service.url + "/api/stats"))[0] == 403
            auth = {"Authorization": "Bearer s3cret"}
            assert (await get(session, service.url + "/api/stats", headers=auth))[0] == 200
            assert (await get(session, service.url + "/stats?token=s3cret"))[0] == 200
            assert (await get(session, service.url + "/metrics", headers={"Authorization": "Bearer nope"}))[0] == 403
    finally:
        await gw.stop()


async def test_api_stats_returns_json_figures_and_rejects_bad_dates(tracking):
    gw, service, session = tracking
    for i in range(3):
        await gw.emit(Event("accepted", queue_id=f"Q{i}", recipient=f"r{i}@x.net", campaign_id="spring"))
        await gw.emit(Event("delivered", queue_id=f"Q{i}", recipient=f"r{i}@x.net", campaign_id="spring", time=time.time() - 100))
    await get(session, f"{service.url}/o/{signer().sign({'k': 'o', 'q': 'Q0', 'r': 'r0@x.net', 'c': 'spring'})}.gif")
    status, _, body = await get(session, f"{service.url}/api/stats?campaign=spring")
    report = json.loads(body)
    assert status == 200
    [row] = report["campaigns"]
    assert (row["campaign"], row["sent"], row["delivered"], row["opens"], row["unique_opens"]) == ("spring", 3, 3, 1, 1)
    assert row["open_rate"] == round(1 / 3, 4)
    status, _, body = await get(session, f"{service.url}/api/stats?since=yesterday")
    assert status == 400 and b"invalid date" in body


async def test_service_binds_ephemeral_port_and_stops_cleanly(tmp_path):
    gw, service = await start_tracking(tracking_config(tmp_path / "data"))
    port = service.port
    assert port and port != 8080
    await gw.stop()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(session, f"http://127.0.0.1:{port}/healthz")


async def test_stats_page_is_self_contained_and_escapes_campaign_names(tracking):
    gw, service, session = tracking
    await gw.emit(Event("accepted", queue_id="Q1", recipient="a@x.net", campaign_id="</script><script>alert(1)",
                        tags=("</script><img src=x>",)))
    status, headers, body = await get(session, f"{service.url}/stats?campaign=%22%3E%3Cb%3E")
    page = body.decode()
    assert '<table id="tags">' in page and "</script><img src=x>" not in page  # by-tag rows: data, not markup
    unfiltered = (await get(session, f"{service.url}/stats"))[2].decode()
    assert '"tags":[{"tag":"\\u003c/script\\u003e\\u003cimg src=x\\u003e"' in unfiltered
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<link" not in page and " src=" not in page and "@import" not in page  # nothing fetched: no CDN
    assert "</script><script>alert(1)" not in page  # the embedded JSON can't close its element
    assert 'value="&quot;&gt;&lt;b&gt;"' in page


def test_bad_machine_user_agent_regex_is_a_config_error(tmp_path):
    from pipeline.app.gateway import Gateway
    from pipeline.config import ConfigError

    gw = Gateway(tracking_config(tmp_path / "data", {"tracking": {"machine_user_agents": ["Scanner("]}}))
    with pytest.raises(ConfigError, match="tracking.machine_user_agents: bad regex"):
        gw.tracking_service()
