"""Webhook endpoints and DKIM domains over the management API, end to end: a real gateway (SMTP in,
delivery into a maildir, the webhook sender, the API on ephemeral ports), a real HTTP receiver on
127.0.0.1, real SQLite files and PostgreSQL (the ``backend`` fixture) for the stored endpoints, and
the local authoritative DNS zone server of the egress tests for the live DNS check."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from aiohttp import web

from pipeline.accounts.webhook_endpoints import WebhookEndpointStore
from pipeline.api.domains import DnsChecker, DomainSettings
from pipeline.app.gateway import Gateway
from pipeline.config import load_config
from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.events import EventEmitter
from pipeline.events.webhooks import verify_webhook
from pipeline.tracking.metrics import GatewayMetrics
from plugins.dkim_sign.keys import generate_key
from tests.support.egress_net import ZoneServer
from tests.test_api import TOML, Checked, cli, mail, wait_for

FAST_WEBHOOKS = """
[webhooks]
poll_interval = 0.05
retry_min = 0.05
"""


class Receiver:
    """An HTTP server that keeps every POST it gets, per path; ``/fail...`` answers 500."""

    def __init__(self) -> None:
        self.got: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        self.changed = asyncio.Condition()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.changed:
            self.got.setdefault(request.path, []).append((dict(request.headers), body))
            self.changed.notify_all()
        return web.Response(status=500 if request.path.startswith("/fail") else 200)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._post)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def wait(self, path: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.got.get(path, [])) >= count)
        return [json.loads(b) for _, b in self.got[path]]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def send(port: int, user: str, to: str, n: int) -> None:
    sender = f"a@{user}.example"
    await aiosmtplib.send(
        mail(sender, to, f"Hook {n}", f"{n}@{user}.example", "hooks"),
        sender=sender,
        recipients=[to],
        hostname="127.0.0.1",
        port=port,
        username=user,
        password=f"pw-{user}",
        start_tls=False,
        use_tls=False,
    )


def tokens_for(conf: Path) -> dict[str, str]:
    return {
        name: cli(
            "api-tokens", "add", name, *(["--credential", cred] if cred else []), "--config", str(conf)
        ).stdout.strip()
        for name, cred in (("admin", None), ("shop", "shop"), ("club", "club"))
    }


async def test_webhook_endpoints_added_over_the_api_get_their_tenants_events_filtered_by_type(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(
        TOML.format(data=tmp_path / "data").replace("[api]\n", "[api]\ntenant_webhook_private = true\n")
        + FAST_WEBHOOKS
    )
    tokens = tokens_for(conf)
    receiver = await Receiver().start()
    gw = Gateway(load_config(str(conf)))
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, api, *gw.tracking_services(port=0), gw.delivery_service(workers=0)]
    await gw.start()
    hooks, one = "/api/v1/webhooks", "/api/v1/webhooks/{id}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                c = Checked(http, api.url, await r.json())
            r_shop, r_club, r_all = receiver.url + "/shop", receiver.url + "/club", receiver.url + "/all"
            status, shop_hook = await c.call(
                "POST", hooks, hooks, tokens["shop"], body={"url": r_shop, "events": ["delivered"]}
            )
            assert (
                status == 201 and shop_hook["credential"] == "shop" and shop_hook["events"] == ["delivered"]
            )
            assert shop_hook["source"] == "api" and shop_hook["id"].startswith("wh_")
            status, club_hook = await c.call("POST", hooks, hooks, tokens["club"], body={"url": r_club})
            assert status == 201 and club_hook["events"] == []
            status, all_hook = await c.call(
                "POST", hooks, hooks, tokens["admin"], body={"url": r_all, "events": ["accepted"]}
            )
            assert status == 201 and all_hook["credential"] is None

            # refusals: another tenant's scope, bad URLs (a password in a URL would be logged), bad types
            status, _ = await c.call(
                "POST", hooks, hooks, tokens["club"], body={"url": r_club, "credential": "shop"}
            )
            assert status == 404
            for bad in (
                {"url": "ftp://127.0.0.1/x"},
                {"url": "http://user:pw@127.0.0.1/x"},
                {"url": "http:///x"},
                {"url": r_club, "events": ["nope"]},
                {"url": r_club, "events": "delivered"},
                {"url": r_club, "secret": "x"},
                ["x"],
            ):
                status, _ = await c.call("POST", hooks, hooks, tokens["club"], body=bad)
                assert status == 400, bad
            status, _ = await c.call("POST", hooks, hooks, tokens["club"], body={"url": r_club})
            assert status == 409  # already an endpoint of this scope

            status, listed = await c.get(hooks, hooks, tokens["shop"])
            assert [e["id"] for e in listed["endpoints"]] == [shop_hook["id"]]
            status, listed = await c.get(hooks, hooks, tokens["admin"])
            assert {e["id"] for e in listed["endpoints"]} == {
                shop_hook["id"],
                club_hook["id"],
                all_hook["id"],
            }

            # events reach each endpoint of their credential, filtered by type
            port = ingress.port("plain")
            await send(port, "shop", "s@example.net", 1)
            await send(port, "club", "c@example.net", 1)
            [shop_event] = await receiver.wait("/shop", 1)
            assert (shop_event["event"], shop_event["credential"]) == ("delivered", "shop")
            club_events = await receiver.wait("/club", 2)
            assert sorted(e["event"] for e in club_events) == ["accepted", "delivered"]
            assert {e["credential"] for e in club_events} == {"club"}
            all_events = await receiver.wait("/all", 2)
            assert sorted((e["event"], e["credential"]) for e in all_events) == [
                ("accepted", "club"),
                ("accepted", "shop"),
            ]
            # each endpoint's deliveries are signed with its own secret (shown once, when added), so its
            # tenant can verify them; not with the operator's [webhooks] secret
            assert shop_hook["secret"].startswith("whsec_") and shop_hook["secret"] != club_hook["secret"]
            assert all("secret" not in e for e in listed["endpoints"])
            secret = shop_hook["secret"].encode()
            global_secret = (tmp_path / "data" / "webhook.key").read_text().strip().encode()
            headers, body = receiver.got["/shop"][0]
            stamp, signature = headers["X-Smtpgate-Timestamp"], headers["X-Smtpgate-Signature"]
            assert verify_webhook(secret, stamp, body, signature)
            assert not verify_webhook(global_secret, stamp, body, signature)
            assert not verify_webhook(club_hook["secret"].encode(), stamp, body, signature)
            headers, body = receiver.got["/all"][0]
            assert verify_webhook(
                all_hook["secret"].encode(),
                headers["X-Smtpgate-Timestamp"],
                body,
                headers["X-Smtpgate-Signature"],
            )

            # the filter changes: club's endpoint now wants bounces only (the URL and scope stay)
            status, changed = await c.call(
                "PATCH", f"{hooks}/{club_hook['id']}", one, tokens["club"], body={"events": ["bounced"]}
            )
            unchanged = {k: v for k, v in club_hook.items() if k not in ("events", "secret")}
            assert status == 200 and changed == {**unchanged, "events": ["bounced"]}
            status, _ = await c.call(
                "PATCH", f"{hooks}/{club_hook['id']}", one, tokens["shop"], body={"events": []}
            )
            assert status == 404
            for bad in ({"events": ["nope"]}, {"events": ["bounced"], "url": r_shop}, {}):
                status, _ = await c.call("PATCH", f"{hooks}/{club_hook['id']}", one, tokens["club"], body=bad)
                assert status == 400, bad
            club_event = Event(
                EventType.DELIVERED, queue_id="q", recipient="c@example.net", credential="club"
            )
            assert r_club not in gw.event_sink.webhook_urls_for(club_event)
            assert r_club in gw.event_sink.webhook_urls_for(
                Event(EventType.BOUNCED, queue_id="q", recipient="c@example.net", credential="club")
            )

            # a signed test event, now; another tenant's endpoint is a 404
            status, result = await c.call(
                "POST", f"{hooks}/{shop_hook['id']}/test", one + "/test", tokens["shop"]
            )
            assert status == 200 and result["delivered"] is True and result["status"] == 200
            [_, test_event] = await receiver.wait("/shop", 2)
            assert test_event["event"] == "test" and test_event["credential"] == "shop"
            headers, body = receiver.got["/shop"][1]
            assert verify_webhook(
                secret, headers["X-Smtpgate-Timestamp"], body, headers["X-Smtpgate-Signature"]
            )
            status, _ = await c.call("POST", f"{hooks}/{shop_hook['id']}/test", one + "/test", tokens["club"])
            assert status == 404
            status, failing = await c.call(
                "POST", hooks, hooks, tokens["admin"], body={"url": receiver.url + "/fail"}
            )
            status, result = await c.call(
                "POST", f"{hooks}/{failing['id']}/test", one + "/test", tokens["admin"]
            )
            assert status == 200 and result == {
                **result,
                "delivered": False,
                "status": 500,
                "error": "HTTP 500",
            }

            # recent attempts of one endpoint
            attempts = one + "/deliveries"
            status, got = await c.get(f"{hooks}/{shop_hook['id']}/deliveries", attempts, tokens["shop"])
            assert [(d["event"], d["url"], d["state"]) for d in got["deliveries"]] == [
                ("delivered", r_shop, "delivered")
            ]
            status, got = await c.get(
                f"{hooks}/{all_hook['id']}/deliveries", attempts, tokens["admin"], limit="1"
            )
            assert len(got["deliveries"]) == 1 and got["deliveries"][0]["url"] == r_all
            status, _ = await c.get(f"{hooks}/{shop_hook['id']}/deliveries", attempts, tokens["club"])
            assert status == 404
            status, _ = await c.get(
                f"{hooks}/{shop_hook['id']}/deliveries", attempts, tokens["shop"], limit="0"
            )
            assert status == 400

            # removed: the next event does not go there any more
            status, _ = await c.call("DELETE", f"{hooks}/{shop_hook['id']}", one, tokens["club"])
            assert status == 404
            status, _ = await c.call("DELETE", f"{hooks}/{shop_hook['id']}", one, tokens["shop"])
            assert status == 204
            status, _ = await c.call("DELETE", f"{hooks}/{shop_hook['id']}", one, tokens["shop"])
            assert status == 404
            await send(port, "shop", "s2@example.net", 2)
            await wait_for(lambda: len(gw.events.events(type="delivered", recipient="s2@example.net")) == 1)
            [later] = gw.events.events(type="delivered", recipient="s2@example.net")
            # only the administrator's global endpoint without a filter is left for a shop event
            assert [d["url"] for d in gw.events.webhook_deliveries() if d["event_id"] == later.id] == [
                receiver.url + "/fail"
            ]
            assert receiver.got["/shop"][2:] == []

            # removing an endpoint drops its pending retries (the failing one keeps retrying until then)
            fail_url = receiver.url + "/fail"
            pending = [d for d in gw.events.webhook_deliveries() if d["url"] == fail_url]
            assert len(pending) == 2 and {d["state"] for d in pending} == {
                "pending"
            }  # s2: accepted, delivered
            status, _ = await c.call("DELETE", f"{hooks}/{failing['id']}", one, tokens["admin"])
            assert status == 204
            after = [d for d in gw.events.webhook_deliveries() if d["url"] == fail_url]
            assert {(d["state"], d["last_error"]) for d in after} == {("dead", "endpoint removed")}
            # another endpoint's pending deliveries are untouched
            assert any(
                d["state"] == "delivered" for d in gw.events.webhook_deliveries() if d["url"] == r_club
            )
    finally:
        await gw.stop(2.0)
        await receiver.close()


async def test_a_tenant_cannot_aim_webhooks_at_non_public_addresses(tmp_path: Path) -> None:
    zone = await ZoneServer().start()
    zone.add("public.example", "A", "93.184.216.34")
    zone.add("inside.example", "A", "93.184.216.34")
    zone.add("inside.example", "AAAA", "fd00::5")
    zone.add("rebind.example", "A", "93.184.216.34")
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(
        TOML.format(data=tmp_path / "data")
        + f'[dns]\nnameservers = ["127.0.0.1"]\nport = {zone.port}\ntimeout = 2.0\n'
    )
    tokens = tokens_for(conf)
    gw = Gateway(load_config(str(conf)))
    api = gw.api_service(port=0)
    gw.services = [api]  # no webhook sender: nothing is POSTed anywhere
    await gw.start()
    hooks, one = "/api/v1/webhooks", "/api/v1/webhooks/{id}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                c = Checked(http, api.url, await r.json())
            for url in (
                "http://127.0.0.1:8081/api/v1/messages",
                "http://localhost/x",
                "http://10.1.2.3/x",
                "http://[::1]/x",
                "http://169.254.169.254/latest/meta-data",
                "http://inside.example/x",
                "http://nowhere.example/x",
            ):
                status, body = await c.call("POST", hooks, hooks, tokens["shop"], body={"url": url})
                assert status == 400 and "public address" in body["error"], url
            status, public = await c.call(
                "POST", hooks, hooks, tokens["shop"], body={"url": "https://public.example/h"}
            )
            assert status == 201
            status, _ = await c.call(
                "POST", hooks, hooks, tokens["admin"], body={"url": "http://127.0.0.1:9/ops"}
            )
            assert status == 201  # an administrator's endpoint may be anywhere

            status, moved = await c.call(
                "POST", hooks, hooks, tokens["shop"], body={"url": "http://rebind.example/h"}
            )
            assert status == 201
            zone.records[("rebind.example", "A")] = ["10.0.0.5"]  # the name now points inside
            status, body = await c.call("POST", f"{hooks}/{moved['id']}/test", one + "/test", tokens["shop"])
            assert status == 409 and "10.0.0.5" in body["error"]
    finally:
        await gw.stop(2.0)
        zone.close()


def test_stored_webhook_endpoints_feed_the_event_recorder_on_both_backends(backend: Any) -> None:
    """One node adds an endpoint, another node's recorder writes the event's delivery to it."""

    def open_store() -> WebhookEndpointStore:
        if backend.url:
            return WebhookEndpointStore(url=backend.url)
        return WebhookEndpointStore(backend.data_dir / "credentials.db")

    writer, reader = open_store(), open_store()
    reader.SHARED_TTL = 0.0  # PostgreSQL: re-read at once (nodes see a change within SHARED_TTL seconds)
    events = backend.event_store()
    try:
        assert reader.urls_for("shop", "delivered") == []  # nothing stored yet (SQLite: no file yet)
        shop = writer.add("http://127.0.0.1:9/shop", "shop", ["delivered", "bounced"], "t1")
        everyone = writer.add("http://127.0.0.1:9/all", None, [], "admin")
        try:
            writer.add("http://127.0.0.1:9/shop", "shop", [])
            raise AssertionError("a duplicate endpoint was stored")
        except ValueError:
            pass
        reader._next_check = 0.0  # SQLite: the file appeared; a real node looks again within RECHECK seconds
        assert sorted(reader.urls_for("shop", "delivered")) == [
            "http://127.0.0.1:9/all",
            "http://127.0.0.1:9/shop",
        ]
        assert reader.urls_for("shop", "opened") == ["http://127.0.0.1:9/all"]
        assert reader.urls_for("club", "delivered") == ["http://127.0.0.1:9/all"]
        assert reader.secret_for("http://127.0.0.1:9/shop", "shop") == shop["secret"].encode()
        assert reader.secret_for("http://127.0.0.1:9/shop", "club") is None  # not club's endpoint
        assert reader.secret_for("http://127.0.0.1:9/all", "club") == everyone["secret"].encode()
        assert reader.get(shop["id"]) == shop and {r["id"] for r in reader.list()} == {
            shop["id"],
            everyone["id"],
        }

        sink = EventEmitter(events, backend.config, GatewayMetrics(), api_webhooks=reader.urls_for)
        event_id = events.record_sync(
            Event(EventType.DELIVERED, queue_id="q1", recipient="x@example.net", credential="shop"),
            sink.webhook_urls_for(
                Event(EventType.DELIVERED, queue_id="q1", recipient="x@example.net", credential="shop")
            ),
        )
        rows = backend.fetch(
            "SELECT url FROM webhook_outbox WHERE event_id = ? ORDER BY url", (event_id,), db="events"
        )
        assert [r[0] for r in rows] == ["http://127.0.0.1:9/all", "http://127.0.0.1:9/shop"]

        assert writer.remove(shop["id"]) is True and writer.remove(shop["id"]) is False
        assert reader.urls_for("shop", "delivered") == ["http://127.0.0.1:9/all"]
    finally:
        writer.close()
        reader.close()
        events.close()


DOMAINS_TOML = """
[tracking]
bounce_domain = "bounces.gw.test"
[plugins.dkim_sign]
default_domain = "shop.example"
[plugins.dkim_sign.domains."shop.example"]
selector = "s1"
key_file = "{shop_key}"
ed25519_selector = "e1"
ed25519_key_file = "{shop_ed}"
[plugins.dkim_sign.domains."club.example"]
selector = "c1"
key_file = "{club_key}"
"""


async def test_domains_list_their_dns_records_and_a_live_dns_check_reports_each_record(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    shop_key, shop_txt = generate_key("shop.example", "s1", data / "dkim")
    shop_ed, shop_ed_txt = generate_key("shop.example", "e1", data / "dkim", "ed25519")
    club_key, _ = generate_key("club.example", "c1", data / "dkim")
    _, stranger_txt = generate_key("club.example", "c1", tmp_path / "elsewhere")  # a key that is not ours
    zone = await ZoneServer().start()

    def txt_value(record: str) -> str:  # the zone-file record as one TXT string
        return "".join(part for part in record.split('"')[1::2])

    zone.add(
        "s1._domainkey.shop.example",
        "TXT",
        '"'
        + '" "'.join(txt_value(shop_txt)[i : i + 200] for i in range(0, len(txt_value(shop_txt)), 200))
        + '"',
    )
    zone.add("e1._domainkey.shop.example", "TXT", f'"{txt_value(shop_ed_txt)}"')
    zone.add("shop.example", "TXT", '"v=spf1 a:gw.test ~all"', '"google-site-verification=x"')
    zone.add("_dmarc.shop.example", "TXT", '"v=DMARC1; p=quarantine"')
    zone.add("bounces.gw.test", "MX", "10 gw.test.")
    zone.add(
        "c1._domainkey.club.example",
        "TXT",
        '"'
        + '" "'.join(
            txt_value(stranger_txt)[i : i + 200] for i in range(0, len(txt_value(stranger_txt)), 200)
        )
        + '"',
    )
    zone.add("club.example", "TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')
    zone.add("gw.test", "A", "198.51.100.7")

    conf = tmp_path / "smtpgate.toml"
    text = TOML.format(data=data).replace(
        'secret = "pw-shop"\n', 'secret = "pw-shop"\nallowed_sender_domains = ["shop.example"]\n'
    )
    dns_conf = zone.dns_config()
    conf.write_text(
        text
        + DOMAINS_TOML.format(shop_key=shop_key, shop_ed=shop_ed, club_key=club_key)
        + f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_conf["port"]}\ntimeout = 2.0\n'
    )
    tokens = tokens_for(conf)
    gw = Gateway(load_config(str(conf)))
    api = gw.api_service(port=0)
    gw.services = [api]
    await gw.start()
    doms, one, check = "/api/v1/domains", "/api/v1/domains/{domain}", "/api/v1/domains/{domain}/check"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                c = Checked(http, api.url, await r.json())
            status, listed = await c.get(doms, doms, tokens["admin"])
            assert [(d["domain"], d["default"]) for d in listed["domains"]] == [
                ("club.example", False),
                ("shop.example", True),
            ]
            [shop_rsa, shop_ed25519] = listed["domains"][1]["keys"]
            assert shop_rsa["name"] == "s1._domainkey.shop.example" and shop_rsa["value"] == txt_value(
                shop_txt
            )
            assert shop_ed25519["type"] == "ed25519" and shop_ed25519["value"] == txt_value(shop_ed_txt)
            assert "PRIVATE" not in json.dumps(listed)
            status, listed = await c.get(doms, doms, tokens["shop"])
            assert [d["domain"] for d in listed["domains"]] == ["shop.example"]
            status, listed = await c.get(
                doms, doms, tokens["club"]
            )  # club may send from any domain: none shown
            assert listed["domains"] == []

            status, shown = await c.get(f"{doms}/shop.example", one, tokens["shop"])
            assert [(r["purpose"], r["type"], r["name"]) for r in shown["records"]] == [
                ("dkim", "TXT", "s1._domainkey.shop.example"),
                ("dkim", "TXT", "e1._domainkey.shop.example"),
                ("spf", "TXT", "shop.example"),
                ("dmarc", "TXT", "_dmarc.shop.example"),
                ("bounce_mx", "MX", "bounces.gw.test"),
            ]
            assert (
                shown["records"][4]["value"] == "10 gw.test."
                and shown["records"][2]["value"] == "v=spf1 a:gw.test ~all"
            )
            assert all(len(part) <= 255 for line in shown["zone"] for part in line.split('"')[1::2])
            for token in ("shop", "club"):
                status, _ = await c.get(f"{doms}/club.example", one, tokens[token])
                assert status == 404
                status, _ = await c.get(f"{doms}/club.example/check", check, tokens[token])
                assert status == 404
            status, _ = await c.get(f"{doms}/nowhere.example", one, tokens["admin"])
            assert status == 404

            # the live check asks the configured resolver (the local zone), record by record
            status, result = await c.get(f"{doms}/shop.example/check", check, tokens["shop"])
            assert status == 200 and result["ok"] is True, result
            checks = result["checks"]
            assert [(k["selector"], k["status"]) for k in checks["dkim"]] == [("s1", "ok"), ("e1", "ok")]
            assert (checks["spf"]["status"], checks["spf"]["found"]) == ("ok", ["v=spf1 a:gw.test ~all"])
            assert checks["dmarc"]["status"] == "ok" and "quarantine" in checks["dmarc"]["detail"]
            assert checks["bounce_mx"]["status"] == "ok" and checks["bounce_mx"]["found"] == ["10 gw.test"]
            status, result = await c.get(f"{doms}/club.example/check", check, tokens["admin"])
            checks = result["checks"]
            assert result["ok"] is False and checks["dkim"][0]["status"] == "mismatch"
            assert checks["spf"]["status"] == "mismatch"  # 192.0.2.0/24 does not hold gw.test's 198.51.100.7
            assert checks["dmarc"]["status"] == "missing"
            assert ("_dmarc.club.example", "TXT") in zone.queries and ("gw.test", "A") in zone.queries

            zone.add("club.example", "TXT", '"v=spf1 ip4:198.51.100.0/24 -all"')  # now two SPF records
            status, result = await c.get(f"{doms}/club.example/check", check, tokens["admin"])
            assert (
                result["checks"]["spf"]["status"] == "mismatch"
                and "more than one" in result["checks"]["spf"]["detail"]
            )
            zone.records[("club.example", "TXT")] = ['"v=spf1 ip4:198.51.100.0/24 -all"']
            status, result = await c.get(f"{doms}/club.example/check", check, tokens["admin"])
            assert result["checks"]["spf"]["status"] == "ok"
    finally:
        await gw.stop(2.0)
        zone.close()


async def test_a_dns_server_that_does_not_answer_is_an_error_not_a_missing_record(tmp_path: Path) -> None:
    """A silent resolver must not make a published record look absent (an operator would re-publish)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never read: queries time out
    silent.bind(("127.0.0.1", 0))
    try:
        settings = DomainSettings(
            hostname="gw.test",
            bounce_domain="bounces.gw.test",
            nameservers=["127.0.0.1"],
            port=silent.getsockname()[1],
            timeout=0.3,
        )
        checker = DnsChecker(settings)
        for result in (
            await checker.spf("shop.example"),
            await checker.dmarc("shop.example"),
            await checker.bounce_mx(),
            await checker.dkim({"selector": "s1", "name": "s1._domainkey.shop.example", "value": None}),
        ):
            assert result["status"] == "error" and result["detail"].startswith("DNS did not answer"), result
    finally:
        silent.close()


async def test_a_failing_webhook_is_logged_without_its_path_query_or_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Receivers put secrets in their URLs (an unguessable path, ?token=); the sender's log lines show
    scheme and host only."""
    conf = tmp_path / "smtpgate.toml"
    secret_url_part = "s3cr3t-path-Zq81"
    receiver = await Receiver().start()
    failing = f"{receiver.url}/fail/{secret_url_part}?token={secret_url_part}"
    conf.write_text(
        TOML.format(data=tmp_path / "data")
        + FAST_WEBHOOKS.replace("[webhooks]\n", "[webhooks]\nmax_attempts = 1\n")
        + f'urls = ["{failing}", "http://u:{secret_url_part}@127.0.0.1:9/"]\n'
    )
    gw = Gateway(load_config(str(conf)))
    ingress = gw.ingress_service()
    gw.services = [ingress, *gw.tracking_services(port=0)]
    caplog.set_level(logging.DEBUG)
    await gw.start()
    try:
        await send(ingress.port("plain"), "shop", "x@example.net", 1)
        await wait_for(
            lambda: (
                {d["state"] for d in gw.events.webhook_deliveries()} == {"dead"}
                and len(gw.events.webhook_deliveries()) == 2
            )
        )
    finally:
        await gw.stop(2.0)
        await receiver.close()
    failures = [r.getMessage() for r in caplog.records if "attempt 1 failed" in r.getMessage()]
    assert len(failures) == 2, failures
    assert f"webhook {receiver.url}/... event" in "\n".join(failures)
    assert "webhook http://127.0.0.1:9/ event" in "\n".join(failures)
    assert all(secret_url_part not in f"{r.getMessage()} {r.args!r}" for r in caplog.records)
