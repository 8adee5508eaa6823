"""The web console over real HTTP: sign-in and its cookies, CSRF refusals, security headers, and
tenant scoping, against a real gateway (SMTP in, the API listener on an ephemeral port, SQLite).
The browser side (chromium, screenshots, overflow) is tests/test_console_browser.py."""

from __future__ import annotations

import base64
import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.accounts.store import CredentialStore
from pipeline.api.console.app import API_ROUTES, CONSOLE, PRESESSION_COOKIE, SESSION_COOKIE, safe_back
from pipeline.api.console.sessions import PresessionSigner, SessionStore
from tests.support.console import TOML, console_gateway, csrf_of, on_storage, visitor
from tests.support.egress_net import ZoneServer
from tests.support.waiting import wait_for

PAGES = (
    "/console/messages",
    "/console/queue",
    "/console/suppressions",
    "/console/credentials",
    "/console/webhooks",
    "/console/domains",
    "/console/stats",
)
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


def assert_hardened(resp, text: str) -> None:
    """The console's headers, and no inline script or style the CSP would have to allow."""
    assert resp.headers["Content-Security-Policy"] == CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "<script" not in text and "<style" not in text and " style=" not in text
    assert '<html lang="en">' in text and '<main id="main"' in text


async def test_sign_in_sets_a_secure_httponly_strict_cookie_and_sign_out_ends_the_session(
    tmp_path: Path,
) -> None:
    async with console_gateway(tmp_path) as run, visitor(run.api.url) as v:
        # not signed in: every page leads to the sign-in form, which comes back to the page
        for page in PAGES:
            resp, _ = await v.get(page + "?recipient=a%40b.example" if page.endswith("messages") else page)
            assert resp.status == 303, page
            assert resp.headers["Location"].startswith("/console/sign-in?next=%2Fconsole%2F")
        resp, form = await v.get("/console/sign-in")
        assert resp.status == 200
        assert_hardened(resp, form)
        assert '<label for="token">' in form and 'type="password"' in form
        [pre] = v.set_cookies[-1].values()
        assert (pre["secure"], pre["httponly"], pre["samesite"], pre["path"]) == (True, True, "Strict", "/")

        # a wrong token: 401, the form again, no session
        resp, page = await v.post("/console/sign-in", {"csrf": csrf_of(form), "token": "sgt_00_wrong"})
        assert resp.status == 401 and "not a valid API token" in page and SESSION_COOKIE not in v.cookies
        # the right token without the sign-in form's pre-session cookie (login CSRF): 403
        form_csrf = csrf_of(page)
        v.cookies.pop(PRESESSION_COOKIE)
        resp, _ = await v.post("/console/sign-in", {"csrf": form_csrf, "token": run.tokens["admin"]})
        assert resp.status == 403 and SESSION_COOKIE not in v.cookies

        _, page = await v.get("/console/sign-in")
        resp, _ = await v.post(
            "/console/sign-in",
            {"csrf": csrf_of(page), "token": run.tokens["admin"], "next": "/console/queue"},
        )
        assert resp.status == 303 and resp.headers["Location"] == "/console/queue"
        [session] = [c[SESSION_COOKIE] for c in v.set_cookies if SESSION_COOKIE in c]
        assert (session["secure"], session["httponly"], session["samesite"], session["path"]) == (
            True,
            True,
            "Strict",
            "/",
        )
        assert int(session["max-age"]) > 0 and len(session.value) >= 40
        assert (
            run.tokens["admin"] not in session.value and run.tokens["admin"] not in resp.headers["Location"]
        )
        assert PRESESSION_COOKIE not in v.cookies  # the pre-session cookie is cleared

        resp, page = await v.get("/console/messages")
        assert resp.status == 200 and "Sign out" in page and "(administrator)" in page

        # sign-out is a POST with the CSRF token; without it, the session survives
        resp, _ = await v.post("/console/sign-out", {})
        assert resp.status == 403
        assert (await v.get("/console/messages"))[0].status == 200
        cookie = v.cookies[SESSION_COOKIE]
        resp, _ = await v.post("/console/sign-out", {"csrf": csrf_of(page)})
        assert resp.status == 303 and resp.headers["Location"] == "/console/sign-in"
        assert SESSION_COOKIE not in v.cookies
        v.cookies[SESSION_COOKIE] = cookie  # the old cookie, replayed, is worth nothing
        resp, _ = await v.get("/console/messages")
        assert resp.status == 303 and resp.headers["Location"].startswith("/console/sign-in")


async def test_a_revoked_token_ends_its_console_sessions(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as run, visitor(run.api.url) as v:
        assert (await v.sign_in(run.tokens["shop"])).status == 303
        assert (await v.get("/console/messages"))[0].status == 200
        run.store.revoke("shop-token")
        resp, _ = await v.get("/console/messages")
        assert resp.status == 303 and resp.headers["Location"].startswith("/console/sign-in")


async def test_posts_without_the_sessions_csrf_token_are_refused_with_403(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as run:
        await run.send("shop", "news@shop.example", "x@example.net", "Sale")
        await wait_for(lambda: len(run.gw.events.events(type="accepted")) == 1)
        [qid] = [e.event.queue_id for e in run.gw.events.events(type="accepted")]
        async with visitor(run.api.url) as v, visitor(run.api.url) as other:
            assert (await v.sign_in(run.tokens["admin"])).status == 303
            assert (await other.sign_in(run.tokens["admin"])).status == 303
            _, page = await v.get("/console/suppressions")
            _, others_page = await other.get("/console/suppressions")
            mine, theirs = csrf_of(page), csrf_of(others_page)
            assert mine != theirs  # one token per session
            for data, headers in (
                ({"address": "a@example.net"}, {}),  # missing
                ({"address": "a@example.net", "csrf": ""}, {}),  # empty
                ({"address": "a@example.net", "csrf": mine[:-1] + ("A" if mine[-1] != "A" else "B")}, {}),
                ({"address": "a@example.net", "csrf": theirs}, {}),  # another session's token
                ({"address": "a@example.net", "csrf": mine}, {"Sec-Fetch-Site": "cross-site"}),
                (
                    {"address": "a@example.net", "csrf": mine},
                    {"Sec-Fetch-Site": "same-site"},
                ),  # a sibling host
            ):
                resp, text = await v.post("/console/suppressions", data, **headers)
                assert resp.status == 403, (data, headers)
                assert "This form cannot be accepted" in text and "reload the page" in text
                assert_hardened(resp, text)
            assert not run.gw.events.is_suppressed("a@example.net")
            for action in ("hold", "release", "retry"):
                resp, _ = await v.post(f"/console/messages/{qid}/{action}", {"csrf": theirs})
                assert resp.status == 403
            assert [r["state"] for r in run.gw.spool.show(qid)["recipients"]] == ["queued"]
            resp, _ = await v.post("/console/credentials/shop/disable", {})
            assert resp.status == 403
            # the same forms with the session's own token work
            resp, _ = await v.post(
                "/console/suppressions",
                {"address": "a@example.net", "csrf": mine},
                **{"Sec-Fetch-Site": "same-origin"},
            )
            assert resp.status == 303 and run.gw.events.is_suppressed("a@example.net")
            resp, _ = await v.post(f"/console/messages/{qid}/hold", {"csrf": mine})
            assert resp.status == 303 and resp.headers["Location"] == f"/console/messages/{qid}"
            assert [r["state"] for r in run.gw.spool.show(qid)["recipients"]] == ["held"]
            resp, _ = await v.post(
                f"/console/messages/{qid}/release", {"csrf": mine, "back": "/console/queue"}
            )
            assert resp.status == 303 and resp.headers["Location"] == "/console/queue"
            resp, _ = await v.post(
                f"/console/messages/{qid}/retry", {"csrf": mine, "back": "https://evil.example/"}
            )
            assert resp.status == 303 and resp.headers["Location"] == f"/console/messages/{qid}"
            _, page = await v.get("/console/queue")
            assert f"{qid}: 1 copy released." in page and f"{qid}: 1 copy made due now." in page
            assert [r["state"] for r in run.gw.spool.show(qid)["recipients"]] == ["queued"]
            resp, _ = await v.post(f"/console/messages/{qid}/hold", {"csrf": mine})
        # signed out, a POST is refused too (and changes nothing)
        async with visitor(run.api.url) as stranger:
            resp, _ = await stranger.post(f"/console/messages/{qid}/release", {"csrf": mine})
            assert resp.status == 403
            assert [r["state"] for r in run.gw.spool.show(qid)["recipients"]] == ["held"]


async def test_every_page_sends_the_strict_csp_nosniff_and_no_referrer(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as run, visitor(run.api.url) as v:
        await run.send("shop", "news@shop.example", "x@example.net", "<script>alert(1)</script>")
        await wait_for(lambda: len(run.gw.events.events(type="accepted")) == 1)
        [qid] = [e.event.queue_id for e in run.gw.events.events(type="accepted")]
        assert (await v.sign_in(run.tokens["admin"])).status == 303
        for page in (*PAGES, f"/console/messages/{qid}", "/console/messages/nonexistent", "/console/nowhere"):
            resp, text = await v.get(page)
            assert resp.status in (200, 404), page
            assert_hardened(resp, text)
            assert resp.headers["Content-Type"].startswith("text/html")
        _, text = await v.get(f"/console/messages/{qid}")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # a subject is text, never markup
        resp, text = await v.get("/console/messages?since=yesterday&recipient=%3Cb%3E")
        assert resp.status == 400 and "invalid date" in text and 'value="&lt;b&gt;"' in text
        resp, css = await v.get("/console/static/console.css")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/css")
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and "overflow-x: auto" in css
        # every form on every page posts to the console itself and carries the CSRF token
        for page in PAGES:
            _, text = await v.get(page)
            for form in re.findall(r"<form\b[^>]*>.*?</form>", text, re.DOTALL):
                if 'method="post"' in form:
                    assert 'name="csrf"' in form and 'action="/console/' in form, (page, form)


async def test_a_tenant_sees_only_its_own_credentials_data_in_the_console(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as run:
        await run.send("shop", "news@shop.example", "x@example.net", "Shop sale", "spring")
        await run.send("club", "info@club.example", "y@example.net", "Club night", "spring")
        await wait_for(lambda: len(run.gw.events.events(type="accepted")) == 2)
        qids = {e.event.credential: e.event.queue_id for e in run.gw.events.events(type="accepted")}
        run.gw.events.suppress("club-only@example.net", "club", "manual")
        async with visitor(run.api.url) as shop, visitor(run.api.url) as admin:
            assert (await shop.sign_in(run.tokens["shop"])).status == 303
            assert (await admin.sign_in(run.tokens["admin"])).status == 303
            _, page = await shop.get("/console/messages")
            assert "Shop sale" in page and "Club night" not in page and qids["club"] not in page
            _, page = await shop.get("/console/messages?recipient=y%40example.net")
            assert "Club night" not in page and "No message matches" in page
            _, page = await shop.get("/console/messages?credential=club")  # not a field a tenant has
            assert "Club night" not in page
            resp, page = await shop.get(f"/console/messages/{qids['club']}")
            assert resp.status == 404 and "Club night" not in page
            resp, page = await shop.get(f"/console/messages/{qids['shop']}")
            assert resp.status == 200 and "Shop sale" in page
            _, page = await shop.get("/console/queue")
            assert qids["shop"] in page and qids["club"] not in page and "1 message waiting" in page
            _, page = await admin.get("/console/queue")
            assert qids["shop"] in page and qids["club"] in page and "2 messages waiting" in page

            _, page = await shop.get("/console/queue")
            resp, _ = await shop.post(f"/console/messages/{qids['club']}/hold", {"csrf": csrf_of(page)})
            assert resp.status == 404
            assert [r["state"] for r in run.gw.spool.show(qids["club"])["recipients"]] == ["queued"]

            _, page = await shop.get("/console/suppressions")
            assert "club-only@example.net" not in page
            resp, _ = await shop.post(
                "/console/suppressions",
                {"csrf": csrf_of(page), "address": "z@example.net", "credential": "club"},
            )
            assert resp.status == 303 and not run.gw.events.is_suppressed("z@example.net", "club")
            resp, _ = await shop.post(
                "/console/suppressions/remove",
                {"csrf": csrf_of(page), "credential": "club", "address": "club-only@example.net"},
            )
            assert run.gw.events.is_suppressed("club-only@example.net", "club")
            resp, _ = await shop.post(
                "/console/suppressions", {"csrf": csrf_of(page), "address": "Z@Example.net"}
            )
            assert run.gw.events.is_suppressed("z@example.net", "shop")
            assert not run.gw.events.is_suppressed("z@example.net", "club")
            _, page = await admin.get("/console/suppressions")
            assert "club-only@example.net" in page and "z@example.net" in page

            _, page = await shop.get("/console/credentials")
            assert ">shop</th>" in page and ">club</th>" not in page
            _, page = await shop.get("/console/stats")
            assert ">spring</th>" in page and "<td>club</td>" not in page
            _, page = await admin.get("/console/stats")
            assert "<td>club</td>" in page and "<td>shop</td>" in page
            resp, _ = await shop.get("/console/stats?credential=club")
            assert resp.status == 400
            resp, page = await shop.get("/console/domains")  # no sender domain of shop's has a key
            assert resp.status == 200 and "No DKIM domain you may see" in page


async def test_sign_in_failures_are_throttled_and_no_token_reaches_the_log(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with console_gateway(tmp_path) as run, visitor(run.api.url) as v:
        _, form = await v.get("/console/sign-in")
        statuses = []
        for i in range(11):
            resp, form = await v.post(
                "/console/sign-in", {"csrf": csrf_of(form), "token": f"sgt_x_secret{i}"}
            )
            statuses.append(resp.status)
        assert statuses == [401] * 10 + [429] and "Too many failed tokens" in form
        # the API shares the budget: its bearer door is closed for this address too
        async with v.http.get(
            run.api.url + "/api/v1/messages", headers={"Authorization": f"Bearer {run.tokens['admin']}"}
        ) as resp:
            assert resp.status == 429
    async with console_gateway(tmp_path / "b") as run, visitor(run.api.url) as v:
        assert (await v.sign_in(run.tokens["admin"])).status == 303
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "signed in" in logged and "without a valid token" in logged
    assert "secret" not in logged and run.tokens["admin"] not in logged


def test_safe_back_keeps_redirects_inside_the_console() -> None:
    assert safe_back("/console/messages/abc?x=1") == "/console/messages/abc?x=1"
    for hostile in (
        "https://evil.example/",
        "//evil.example/console/",
        "/console\\..\\x",
        "/api/v1/messages",
        "/console/x\r\nSet-Cookie: a=b",
        "",
        None,
    ):
        assert safe_back(hostile) == "/console/"


def test_sessions_expire_when_idle_and_after_their_lifetime_and_are_stored_hashed() -> None:
    store = SessionStore(idle=60, lifetime=300)
    sid, session = store.create("tok1", now=1000.0)
    assert sid not in repr(store._sessions) and store.get(sid, now=1050.0) is session
    assert store.get(sid, now=1111.0) is None  # 61 s idle
    sid, _ = store.create("tok1", now=2000.0)
    for t in range(2050, 2300, 50):
        assert store.get(sid, now=float(t)) is not None
    assert store.get(sid, now=2301.0) is None  # busy, but past its lifetime
    a, _ = store.create("tok2", now=3000.0)
    b, _ = store.create("tok2", now=3000.0)
    assert (
        store.end_token("tok2") == 2 and store.get(a, now=3001.0) is None and store.get(b, now=3001.0) is None
    )


@pytest.mark.parametrize("tamper", ["nonce", "mac", "expired"])
def test_the_sign_in_forms_value_is_bound_to_its_cookie_and_expires(tamper: str) -> None:
    signer = PresessionSigner(max_age=60)
    nonce, value = signer.issue(now=1000.0)
    assert signer.check(nonce, value, now=1030.0)
    if tamper == "nonce":
        assert not signer.check(nonce + "x", value, now=1030.0)
    elif tamper == "mac":
        assert not signer.check(nonce, value[:-1] + ("0" if value[-1] != "0" else "1"), now=1030.0)
    else:
        assert not signer.check(nonce, value, now=1061.0)
    assert not PresessionSigner(max_age=60).check(nonce, value, now=1030.0)  # another process's key


async def test_the_timeline_page_shows_the_story_the_api_tells(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as run, visitor(run.api.url) as v:
        await run.send("shop", "news@shop.example", "x@example.net", "Spring sale")
        await run.send("shop", "news@shop.example", "later@example.net", "Still queued")
        await wait_for(lambda: len(run.gw.events.events(type="accepted")) == 2)
        qids = {e.event.recipient: e.event.queue_id for e in run.gw.events.events(type="accepted")}
        assert (await v.sign_in(run.tokens["shop"])).status == 303

        # while queued: the raw message is a download, never rendered inline
        resp, raw = await v.get(f"/console/messages/{qids['later@example.net']}/raw")
        assert resp.status == 200 and "Subject: Still queued" in raw
        assert resp.headers["Content-Disposition"].startswith("attachment;")
        assert resp.headers["Content-Type"].startswith("message/rfc822")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        run.gw.spool.hold(qids["later@example.net"])
        await run.start_delivery()
        await wait_for(lambda: len(run.gw.events.events(type="delivered")) == 1)
        resp, _ = await v.get(f"/console/messages/{qids['x@example.net']}/raw")
        assert resp.status == 404  # delivered: the spool keeps no bytes

        qid = qids["x@example.net"]
        async with v.http.get(
            f"{run.api.url}/api/v1/messages/{qid}", headers={"Authorization": f"Bearer {run.tokens['shop']}"}
        ) as r:
            story = await r.json()
        resp, page = await v.get(f"/console/messages/{qid}")
        assert resp.status == 200
        timeline = page[page.index('id="timeline"') :]
        assert re.findall(r'class="etype">([^<]+)<', timeline) == [e["type"] for e in story["events"]]
        assert [e["type"] for e in story["events"]] == ["accepted", "delivered"]
        delivered = story["events"][1]
        assert f"<dd>{delivered['relay']}</dd>" in timeline and f"<dd>{delivered['dsn']}</dd>" in timeline
        for step in story["trace"]:
            assert f"<td>{step['plugin']}</td>" in page
        [copy] = story["recipients"]
        assert "Headers as delivered to x@example.net" in page
        for name, _value in copy["final_headers"]:
            assert f'<th scope="row">{name}</th>' in page
        assert story["client_ip"] in page and "Spring sale" in page


async def test_the_sign_in_page_warns_when_a_secure_cookie_cannot_be_kept(tmp_path: Path) -> None:
    async with console_gateway(tmp_path) as run, visitor(run.api.url) as v:
        warning = "browsers do not\nkeep the console"
        _, page = await v.get("/console/sign-in")
        assert warning not in page  # 127.0.0.1: a secure context for browsers
        resp, page = await v.request("GET", "/console/sign-in", headers={"Host": "mail.example.com:8081"})
        assert resp.status == 200 and warning in page
        _, page = await v.request(
            "GET", "/console/sign-in", headers={"Host": "mail.example.com", "X-Forwarded-Proto": "https"}
        )
        assert warning not in page
        _, page = await v.request("GET", "/console/sign-in", headers={"Host": "localhost:8081"})
        assert warning not in page


async def test_every_api_handler_the_console_calls_is_served_by_the_api(tmp_path: Path) -> None:
    """The console finds the API's handlers by route name: a renamed or removed route must fail here,
    not as a 404 page in production."""
    async with console_gateway(tmp_path) as run:
        console_app = run.api.app[CONSOLE]
        for name, method in API_ROUTES:
            assert console_app.api_handler(name, method) is not None, (name, method)
        assert console_app.api_handler("no_such_route") is None
        assert console_app.api_handler("messages", "DELETE") is None


class _Markup(HTMLParser):
    """What the accessibility check needs: fields, labels, header cells, landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.th: list[dict[str, str | None]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.fields.append(a)
        elif tag == "label" and a.get("for"):
            self.label_for.add(a["for"] or "")
        elif tag == "th":
            self.th.append(a)


async def test_every_field_has_a_label_every_header_cell_a_scope_and_every_page_landmarks(
    tmp_path: Path,
) -> None:
    async with console_gateway(tmp_path) as run, visitor(run.api.url) as v:
        await run.send("shop", "news@shop.example", "x@example.net", "Sale")
        await wait_for(lambda: len(run.gw.events.events(type="accepted")) == 1)
        [qid] = [e.event.queue_id for e in run.gw.events.events(type="accepted")]
        run.gw.events.suppress("gone@example.net", "", "manual")
        _, page = await v.get("/console/sign-in")
        pages = {"/console/sign-in": page}
        assert (await v.sign_in(run.tokens["admin"])).status == 303
        for path in (*PAGES, f"/console/messages/{qid}"):
            pages[path] = (await v.get(path))[1]
        checked_fields = checked_th = 0
        for path, html in pages.items():
            m = _Markup()
            m.feed(html)
            assert {"header", "main", "footer"} <= m.tags, path
            if path != "/console/sign-in":
                assert "nav" in m.tags, path
            for f in m.fields:
                assert f.get("id") in m.label_for or f.get("aria-label"), (path, f)
                checked_fields += 1
            for th in m.th:
                assert th.get("scope") in ("col", "row"), (path, th)
                checked_th += 1
        assert checked_fields >= 15 and checked_th >= 30  # the check looked at real forms and tables


async def test_disabling_a_credential_in_the_console_refuses_its_smtp_auth_until_enabled(
    tmp_path: Path,
) -> None:
    async with console_gateway(tmp_path) as run, visitor(run.api.url) as v:
        store = CredentialStore(run.gw.config.data_dir / "credentials.db")
        try:
            secret = store.add("app", "password", username="app")
        finally:
            store.close()
        assert secret and await smtp_login_works(run.ingress.port("plain"), "app", secret)
        assert (await v.sign_in(run.tokens["admin"])).status == 303
        _, page = await v.get("/console/credentials")
        assert 'aria-label="Disable app"' in page and 'aria-label="Disable shop"' not in page  # config file's
        resp, _ = await v.post("/console/credentials/app/disable", {"csrf": csrf_of(page)})
        assert resp.status == 303
        _, page = await v.get("/console/credentials")
        assert "app: disabled." in page and 'aria-label="Enable app"' in page
        assert not await smtp_login_works(run.ingress.port("plain"), "app", secret)
        resp, _ = await v.post("/console/credentials/app/enable", {"csrf": csrf_of(page)})
        assert resp.status == 303 and await smtp_login_works(run.ingress.port("plain"), "app", secret)
        # a tenant cannot: 404, as over the API
        async with visitor(run.api.url) as shop:
            assert (await shop.sign_in(run.tokens["shop"])).status == 303
            _, page = await shop.get("/console/credentials")
            resp, _ = await shop.post("/console/credentials/app/disable", {"csrf": csrf_of(page)})
            assert resp.status == 404
        assert await smtp_login_works(run.ingress.port("plain"), "app", secret)


async def smtp_login_works(port: int, user: str, password: str) -> bool:
    """Whether AUTH with these succeeds (a real SMTP session against the gateway)."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
    await smtp.connect()
    try:
        await smtp.login(user, password)
        return True
    except aiosmtplib.SMTPAuthenticationError:
        return False
    finally:
        await smtp.quit()


async def test_the_message_log_pages_through_bookmarkable_urls(tmp_path: Path, backend: Any) -> None:
    async with console_gateway(tmp_path, on_storage(TOML, backend.url)) as run, visitor(run.api.url) as v:
        for i in range(5):
            await run.send("shop", "news@shop.example", f"r{i}@example.net", f"Letter {i}", "autumn")
        await run.send("shop", "news@shop.example", "other@example.net", "Elsewhere", "spring")
        await wait_for(lambda: len(run.gw.events.events(type="accepted")) == 6)
        assert (await v.sign_in(run.tokens["shop"])).status == 303
        seen: list[str] = []
        url = "/console/messages?campaign=autumn&limit=2"
        while url:
            resp, page = await v.get(url)
            assert resp.status == 200 and "Elsewhere" not in page
            seen += re.findall(r"Letter (\d)", page)
            nxt = re.search(r'<a href="([^"]+)" rel="next">', page)
            url = nxt.group(1).replace("&amp;", "&") if nxt else ""
            if url:
                assert "campaign=autumn" in url and "limit=2" in url and "cursor=" in url
        assert seen == ["4", "3", "2", "1", "0"]  # newest first, each once
        # the same URL in another signed-in browser shows the same page (a shared link)
        async with visitor(run.api.url) as other:
            assert (await other.sign_in(run.tokens["admin"])).status == 303
            _, page = await other.get("/console/messages?campaign=autumn&limit=2")
            assert re.findall(r"Letter (\d)", page) == ["4", "3"]


async def test_with_the_console_switched_off_the_listener_serves_the_json_api_only(tmp_path: Path) -> None:
    toml = TOML.replace("[api]\nlisten_port = 0\n", "[api]\nlisten_port = 0\nconsole = false\n")
    async with console_gateway(tmp_path, toml) as run, visitor(run.api.url) as v:
        resp, text = await v.get("/console/sign-in")
        assert resp.status == 404 and resp.headers["Content-Type"].startswith("application/json")
        async with v.http.get(
            run.api.url + "/api/v1/messages", headers={"Authorization": f"Bearer {run.tokens['admin']}"}
        ) as r:
            assert r.status == 200


async def test_a_domain_page_shows_its_records_and_what_dns_answers_and_tenants_see_only_their_own(
    tmp_path: Path,
) -> None:
    """The Domains pages are the API's domain handlers: records to publish, a live check through
    ``[dns]`` (a local authoritative zone here), and a tenant limited to its sender domains."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "dkim.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    zone = await ZoneServer().start()
    try:
        toml = (
            TOML.replace('secret = "pw-shop"\n', 'secret = "pw-shop"\nallowed_sender_domains = ["shop.example"]\n')
            + '[plugins.dkim_sign]\ndefault_domain = "shop.example"\n'
            + f'[plugins.dkim_sign.domains."shop.example"]\nselector = "s1"\nkey_file = "{pem}"\n'
            + f'[dns]\nnameservers = ["127.0.0.1"]\nport = {zone.port}\ntimeout = 2.0\n'
        )
        async with console_gateway(tmp_path / "gw", toml) as run:
            async with visitor(run.api.url) as admin, visitor(run.api.url) as shop, visitor(run.api.url) as club:
                for v, who in ((admin, "admin"), (shop, "shop"), (club, "club")):
                    assert (await v.sign_in(run.tokens[who])).status == 303
                _, page = await admin.get("/console/domains")
                assert 'href="/console/domains/shop.example"' in page
                resp, page = await shop.get("/console/domains/shop.example")
                assert resp.status == 200 and "s1._domainkey.shop.example" in page and "v=DKIM1; k=rsa; p=" in page
                assert "Check DNS now" in page
                resp, _ = await club.get("/console/domains/shop.example")  # not club's sender domain
                assert resp.status == 404
                _, page = await club.get("/console/domains")
                assert "shop.example" not in page

                # nothing published yet: the live check says so; then the DKIM record appears
                _, page = await shop.get("/console/domains/shop.example?check=1")
                assert "Some records are missing or differ." in page and "state-missing" in page
                public = key.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
                value = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
                zone.add("s1._domainkey.shop.example", "TXT",  # character-strings of at most 255 octets
                         " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200)))  # fmt: skip
                _, page = await shop.get("/console/domains/shop.example?check=1")
                assert re.search(r"DKIM s1</td>.*?state-ok", page, re.S), page
    finally:
        zone.close()
