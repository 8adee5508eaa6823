"""Refusals are ``rejected`` events: SMTP refusals at each phase and refused HTTP sends, stored with
their reply, phase, client and credential, aggregated under a flood, counted in /metrics, and listed by
``GET /api/v1/events?type=rejected`` to the tenant whose credential it was. A real gateway (SMTP
listener and API on ephemeral ports, real SQLite files) and real clients (smtplib, aiohttp)."""

from __future__ import annotations

import asyncio
import smtplib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from pipeline import Plugin, Reject, hookimpl
from pipeline.accounts.api_tokens import ApiTokenStore, open_api_token_store
from pipeline.app.cli import main
from pipeline.app.gateway import Gateway
from pipeline.config import parse_config
from pipeline.contract.context import Event
from pipeline.events.refusals import RefusalEvents, parse_reply
from pipeline.milter import milter_services
from tests.support.milter_client import MilterClient
from tests.support.waiting import wait_for

EVENTS = "/api/v1/events"


def config(tmp_path: Path) -> dict[str, Any]:
    return {
        "gateway": {"hostname": "gw.test", "data_dir": str(tmp_path / "data")},
        "listeners": [{"name": "plain", "port": 0, "tls": "none", "require_tls": False}],
        "chain": {"plugins": ["header_validation", "suppression"]},
        "spool": {"workers": 0},
        "egress": {"type": "maildir"},
        "api": {"listen_port": 0},
        "limits": {"shutdown_grace": 2.0},
        "credentials": [
            {
                "name": "shop",
                "username": "shop",
                "secret": "pw-shop",
                "allowed_sender_domains": ["shop.example"],
            },
            {"name": "club", "username": "club", "secret": "pw-club"},
        ],
    }


def smtp_session(
    port: int, user: str | None, password: str | None, script: Callable[[smtplib.SMTP], None]
) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        if user is not None and password is not None:
            s.login(user, password)
        script(s)


async def test_smtp_and_http_refusals_are_rejected_events_aggregated_counted_and_tenant_scoped(
    tmp_path: Path, monkeypatch: Any
) -> None:
    gw = Gateway(parse_config(config(tmp_path)))
    (tmp_path / "data").mkdir()
    store = ApiTokenStore(tmp_path / "data" / "credentials.db")
    tokens = {
        name: store.add(name, cred) for name, cred in (("admin", None), ("shop", "shop"), ("club", "club"))
    }
    store.close()
    ingress, api = gw.ingress_service(), gw.api_service(port=0)
    gw.services = [ingress, api]
    await gw.start()
    try:
        gw.events.suppress("blocked@example.net")
        port = ingress.port("plain")

        def bad_login(s: smtplib.SMTP) -> None:
            try:
                s.login("shop", "wrong")
            except smtplib.SMTPAuthenticationError as exc:
                assert exc.smtp_code == 535
            else:
                raise AssertionError("a wrong password was accepted")

        def shop_refusals(s: smtplib.SMTP) -> None:
            assert s.mail("news@club.example")[0] == 553  # not the shop's sender domain
            assert s.mail("news@shop.example")[0] == 250
            for _ in range(50):  # a flood of one refusal: one stored event, then a count
                assert s.rcpt("blocked@example.net")[0] == 550
            assert s.rcpt("ok@example.net")[0] == 250
            code, _ = s.data(b"From: a@shop.example, b@shop.example\r\nSubject: two\r\n\r\nbody\r\n")
            assert code == 550

        await asyncio.to_thread(smtp_session, port, None, None, bad_login)
        await asyncio.to_thread(smtp_session, port, "shop", "pw-shop", shop_refusals)

        def stored() -> list[Event]:
            return [s.event for s in gw.events.events(type="rejected")]

        await wait_for(lambda: len(stored()) == 4)  # auth, mail, the first rcpt, data
        by_phase = {e.data["phase"]: e for e in stored()}
        assert set(by_phase) == {"auth", "mail", "rcpt", "data"}
        auth = by_phase["auth"]
        assert auth.credential is None and auth.data["code"] == 535 and auth.data["enhanced"] == "5.7.8"
        assert auth.data["client_ip"] == "127.0.0.1" and auth.data["listener"] == "plain"
        mail = by_phase["mail"]
        assert (mail.credential, mail.data["code"], mail.data["sender"]) == ("shop", 553, "news@club.example")
        rcpt = by_phase["rcpt"]
        assert (rcpt.credential, rcpt.recipient, rcpt.data["sender"]) == (
            "shop",
            "blocked@example.net",
            "news@shop.example",
        )
        assert (
            rcpt.data["code"] == 550 and rcpt.data["enhanced"] == "5.0.0" and "stoplist" in rcpt.data["text"]
        )
        assert rcpt.data["count"] == 1
        data = by_phase["data"]
        assert data.data["enhanced"] == "5.6.0" and "From" in data.data["text"]
        # smtplib tries AUTH PLAIN, then LOGIN: the second 535 is a repeat of the first
        assert gw.counters["rejected_events_total:aggregated"] == 49 + 1
        assert gw.counters["smtp_refusals_total:550"] >= 51

        # the window's repeats become one event with their count when it closes (here: flushed)
        gw.refusals.flush()
        await wait_for(lambda: len(stored()) == 6)
        repeats = sorted(
            (e.data["phase"], e.data["count"], e.credential) for e in stored() if e.data.get("repeated")
        )
        assert repeats == [("auth", 1, None), ("rcpt", 49, "shop")]

        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                doc = await r.json()

            async def get(who: str, **params: str) -> tuple[int, Any]:
                async with http.get(
                    api.url + EVENTS, params=params, headers={"Authorization": f"Bearer {tokens[who]}"}
                ) as r:
                    got = await r.json()
                schema = {
                    **doc["paths"][EVENTS]["get"]["responses"][str(r.status)]["content"]["application/json"][
                        "schema"
                    ],
                    "components": doc["components"],
                }
                assert [e.message for e in Draft202012Validator(schema).iter_errors(got)] == []
                return r.status, got

            # a refused HTTP send is a rejected event too (listener "api"), of the sending credential
            async with http.post(
                api.url + "/api/v1/messages",
                headers={"Authorization": f"Bearer {tokens['shop']}"},
                json={"from": "x@club.example", "to": ["y@example.net"], "subject": "s", "text": "t"},
            ) as r:
                assert r.status == 422
            await wait_for(lambda: len(stored()) == 7)

            status, page = await get("admin", type="rejected")
            assert status == 200 and len(page["events"]) == 7 and page["next"] is None
            assert page["events"][0]["data"]["listener"] == "api"  # newest first
            assert page["events"][0]["data"]["phase"] == "mail" and page["events"][0]["credential"] == "shop"
            status, page = await get("shop", type="rejected")
            assert {e["credential"] for e in page["events"]} == {"shop"} and len(page["events"]) == 5
            status, page = await get("club", type="rejected")
            assert page["events"] == []  # the shop's refusals are not the club's business
            status, _ = await get("club", credential="shop")
            assert status == 404
            status, page = await get("admin", type="rejected", limit="2")
            assert len(page["events"]) == 2 and page["next"]
            status, page2 = await get("admin", type="rejected", limit="5", cursor=page["next"])
            assert len(page2["events"]) == 5 and page2["next"] is None
            assert {e["id"] for e in page["events"]}.isdisjoint(e["id"] for e in page2["events"])
            # the terminal twin lists the same refusals
            monkeypatch.setenv("SMTPGATE_DATA_DIR", str(tmp_path / "data"))
            out = CliRunner().invoke(main, ["events", "list", "--type", "rejected", "--credential", "shop"])
            assert out.exit_code == 0, out.output
            lines = out.stdout.splitlines()
            assert len(lines) == 5 and all(
                " rejected " in line and "credential=shop" in line for line in lines
            )
            assert any(
                "rcpt" in line and "to=<blocked@example.net>" in line and " x49: 550 5.0.0" in line
                for line in lines
            )
            out = CliRunner().invoke(main, ["events", "list", "--type", "nope"])
            assert out.exit_code == 2 and "type must be one of" in out.output
            for bad in (
                {"type": "nope"},
                {"limit": "0"},
                {"cursor": "!!"},
                {"since": "someday"},
                {"typo": "x"},
            ):
                status, _ = await get("admin", **bad)
                assert status == 400, bad
    finally:
        await gw.stop(2.0)


class Recorder:
    """An EventSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event, *, strict: bool = False) -> None:
        self.events.append(event)


async def test_refusal_kinds_tracked_at_once_are_bounded_and_the_rest_only_counted() -> None:
    sink, metrics = Recorder(), Counter[str]()
    refusals = RefusalEvents(sink, metrics, max_keys=3)
    for i in range(5):
        refusals.note(reply="554 5.7.1 Relay access denied", phase="rcpt", client_ip=f"192.0.2.{i}")
    await refusals.aclose()
    assert [e.data["client_ip"] for e in sink.events] == ["192.0.2.0", "192.0.2.1", "192.0.2.2"]
    assert (metrics["rejected_events_total:stored"], metrics["rejected_events_total:dropped"]) == (3, 2)


async def test_new_kinds_stored_per_window_are_capped_for_all_clients_together() -> None:
    now = [0.0]
    sink, metrics = Recorder(), Counter[str]()
    refusals = RefusalEvents(sink, metrics, max_stored=4, clock=lambda: now[0])
    for i in range(10):  # ten clients, one refusal each, within one window
        refusals.note(reply="554 5.7.1 Relay access denied", phase="rcpt", client_ip=f"203.0.113.{i}")
    now[0] += 61  # the next window has its own budget
    refusals.note(reply="554 5.7.1 Relay access denied", phase="rcpt", client_ip="203.0.113.99")
    await refusals.aclose()
    assert [e.data["client_ip"] for e in sink.events] == [f"203.0.113.{i}" for i in range(4)] + [
        "203.0.113.99"
    ]
    assert (metrics["rejected_events_total:stored"], metrics["rejected_events_total:dropped"]) == (5, 6)


async def test_a_window_that_ended_starts_a_new_stored_event_and_reports_the_old_count() -> None:
    now = [1000.0]
    sink, metrics = Recorder(), Counter[str]()
    refusals = RefusalEvents(sink, metrics, window=60.0, clock=lambda: now[0])
    for _ in range(3):
        refusals.note(
            reply="535 5.7.8 Authentication credentials invalid", phase="auth", client_ip="198.51.100.7"
        )
    now[0] += 61
    refusals.note(
        reply="535 5.7.8 Authentication credentials invalid", phase="auth", client_ip="198.51.100.7"
    )
    await refusals.aclose()
    assert [(e.data["count"], e.data.get("repeated", False)) for e in sink.events] == [
        (1, False),
        (2, True),
        (1, False),
    ]
    assert parse_reply("550-5.1.1 first\r\n550 5.1.1 second") == (550, "5.1.1", "first second")


async def test_rejected_events_are_stored_and_listed_on_both_backends(tmp_path: Path, backend: Any) -> None:
    data = config(tmp_path)
    data["gateway"]["data_dir"] = str(backend.data_dir)
    gw = Gateway(parse_config({**data, **backend.overrides}))
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_api_token_store(backend.url, backend.data_dir)
    admin, club = store.add("admin"), store.add("club", "club")
    store.close()
    ingress, api = gw.ingress_service(), gw.api_service(port=0)
    gw.services = [ingress, api]
    await gw.start()
    try:

        def relay_attempt(s: smtplib.SMTP) -> None:  # no AUTH: refused at MAIL (no relay for strangers)
            assert s.mail("a@elsewhere.example")[0] == 530

        def club_refusal(s: smtplib.SMTP) -> None:
            assert s.mail("x@club.example", options=["SIZE=999999999999"])[0] == 552

        await asyncio.to_thread(smtp_session, ingress.port("plain"), None, None, relay_attempt)
        await asyncio.to_thread(smtp_session, ingress.port("plain"), "club", "pw-club", club_refusal)
        async with aiohttp.ClientSession() as http:

            async def listed(token: str) -> list[dict[str, Any]]:
                async with http.get(
                    api.url + EVENTS,
                    params={"type": "rejected"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    assert r.status == 200
                    return list((await r.json())["events"])

            async with asyncio.timeout(20):
                while len(await listed(admin)) < 2:
                    await asyncio.sleep(0.02)
            events = await listed(admin)
            assert sorted(
                (e["credential"] or "-", e["data"]["phase"], e["data"]["code"]) for e in events
            ) == [("-", "mail", 530), ("club", "mail", 552)]
            assert {e["data"]["client_ip"] for e in events} == {"127.0.0.1"}
            assert [(e["credential"], e["data"]["phase"]) for e in await listed(club)] == [("club", "mail")]
    finally:
        await gw.stop(2.0)


def test_refusals_reach_only_webhook_endpoints_that_ask_for_them() -> None:
    from pipeline.events.webhooks import webhook_urls

    cfg = parse_config(
        {
            "webhooks": {
                "urls": ["https://all.example/hook"],
                "endpoints": [
                    {"url": "https://refusals.example/hook", "events": ["rejected"]},
                    {
                        "url": "https://club-refusals.example/hook",
                        "events": ["rejected"],
                        "credential": "club",
                    },
                    {"url": "https://everything.example/hook"},
                    {
                        "url": "https://sendgrid.example/hook",
                        "format": "sendgrid",
                        "events": ["rejected", "delivered"],
                    },
                ],
            },
            "credentials": [
                {"name": "shop", "username": "shop", "secret": "pw", "webhooks": ["https://shop.example/h"]}
            ],
        }
    )
    assert webhook_urls(cfg, "shop", None, "rejected") == ["https://refusals.example/hook"]
    assert webhook_urls(cfg, "club", None, "rejected") == [
        "https://refusals.example/hook",
        "https://club-refusals.example/hook",
    ]
    delivered = webhook_urls(cfg, "shop", None, "delivered")
    assert "https://all.example/hook" in delivered and "https://shop.example/h" in delivered
    assert "https://everything.example/hook" in delivered and "https://refusals.example/hook" not in delivered


class RefuseNobody(Plugin):
    """Refuses RCPT for nobody@ (as a stoplist or a directory check would)."""

    name = "refuse_nobody"

    @hookimpl
    def on_rcpt_to(self, address: str) -> Reject | None:
        return Reject(550, "5.1.1", "No such user here") if address.startswith("nobody@") else None


async def test_milter_refusals_are_rejected_events_of_the_mta_client(tmp_path: Path) -> None:
    data = {**config(tmp_path), "milter": {"listen": ["inet:127.0.0.1:0"]}}
    gw = Gateway(parse_config(data), extra_plugins=[RefuseNobody])
    [milter] = milter_services(gw.config, gw.chain, gw.refusals)
    gw.services = [milter]
    await gw.start()
    try:
        ep = milter.bound[0]
        c = await MilterClient.tcp(ep.host, ep.port)
        await c.negotiate()
        await c.connect(addr="192.0.2.99")
        await c.helo()
        await c.mail("sender@example.com")
        assert await c.rcpt("nobody@example.org") == [(b"y", b"550 5.1.1 No such user here\x00")]
        assert await c.rcpt("a@example.org") == [(b"c", b"")]
        await c.close()
        await wait_for(lambda: len(gw.events.events(type="rejected")) == 1)
        [stored] = [s.event for s in gw.events.events(type="rejected")]
        assert (stored.recipient, stored.data["phase"], stored.data["code"], stored.data["listener"]) == (
            "nobody@example.org",
            "rcpt",
            550,
            "milter",
        )
        assert stored.data["client_ip"] == "192.0.2.99" and stored.data["sender"] == "sender@example.com"
    finally:
        await gw.stop(2.0)
