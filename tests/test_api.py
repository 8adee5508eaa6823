"""The management API and its CLI twins, end to end: mail sent over real SMTP by two tenants, a real
gateway (ingress, delivery into a maildir, the API on an ephemeral port), real SQLite files, and
every JSON answer checked against the OpenAPI document the API serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from pipeline.accounts.api_tokens import open_api_token_store
from pipeline.app.cli import main
from pipeline.app.gateway import Gateway
from pipeline.config import load_config
from tests.support.console import TOML
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def write_conf(path: Path, data_dir: Path, backend: Any = None) -> Path:
    """The test config for ``data_dir``, on ``backend``'s storage when given (``[storage] url``)."""
    text = TOML.format(data=data_dir)
    if backend is not None and backend.url:
        text += f'[storage]\nurl = "{backend.url}"\n'
    path.write_text(text)
    return path


def mail(sender: str, to: str, subject: str, msgid: str, campaign: str) -> bytes:
    return (
        f"Message-Id: <{msgid}>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nFrom: <{sender}>\r\nTo: <{to}>\r\n"
        f"Subject: {subject}\r\nX-Campaign-Id: {campaign}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
    ).encode()


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


class Checked:
    """An HTTP client for the API that validates every JSON answer against the served OpenAPI document."""

    def __init__(self, http: aiohttp.ClientSession, base: str, doc: dict[str, Any]) -> None:
        self.http, self.base, self.doc = http, base, doc
        self.checked: set[tuple[str, str]] = set()

    def _schema(self, method: str, template: str, status: int) -> dict[str, Any]:
        responses = self.doc["paths"][template][method]["responses"]
        assert str(status) in responses, f"{method} {template}: status {status} is not in the OpenAPI document"
        return dict(responses[str(status)]["content"]["application/json"]["schema"])

    async def call(self, method: str, path: str, template: str, bearer: str | None, *, body: Any = None,
                   data: bytes | None = None, **params: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        async with self.http.request(method, self.base + path, params=params, headers=headers, json=body,
                                     data=data) as r:
            if r.status == 204:
                assert await r.read() == b""
                self.checked.add((method, template, "204"))
                assert "204" in self.doc["paths"][template][method.lower()]["responses"]
                return r.status, None
            assert r.content_type == "application/json", (path, r.status, r.content_type)
            got = await r.json()
        schema = {**self._schema(method.lower(), template, r.status), "components": self.doc["components"]}
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(got)]
        assert errors == [], f"{method} {path} {r.status}: {errors}"
        self.checked.add((method, template, str(r.status)))
        return r.status, got

    async def get(self, path: str, template: str, bearer: str | None, **params: str) -> tuple[int, Any]:
        return await self.call("GET", path, template, bearer, **params)


def test_api_tokens_cli_prints_the_token_alone_and_stores_only_its_hash(tmp_path: Path, backend: Any) -> None:
    conf = write_conf(tmp_path / "smtpgate.toml", tmp_path / "data", backend)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pipeline.app.cli", "api-tokens", "add", "ops", "--credential", "shop",
                        "--config", str(conf)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert r.stdout == token + "\n" and token.startswith("sgt_")
    assert "shown only now" in r.stderr and token not in r.stderr
    if backend.url is None:
        raw = (tmp_path / "data" / "credentials.db").read_bytes()
    else:
        raw = repr(backend.fetch("SELECT * FROM api_tokens")).encode()
        assert not (tmp_path / "data" / "credentials.db").exists()  # nothing of it on the node's disk
    secret = token.split("_", 2)[2]  # sgt_<id>_<secret>; the secret itself may contain "_"
    assert token.encode() not in raw and secret.encode() not in raw
    store = open_api_token_store(backend.url, tmp_path / "data")
    try:
        principal = store.verify(token)
        assert principal is not None and (principal.name, principal.credential) == ("ops", "shop")
        assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    finally:
        store.close()
    listed = cli("api-tokens", "list", "--config", str(conf))
    assert "ops" in listed.output and "shop" in listed.output and token not in listed.output
    assert cli("api-tokens", "add", "x", "--credential", "nobody", "--config", str(conf)).exit_code == 1
    assert cli("api-tokens", "add", "ops", "--config", str(conf)).exit_code == 1  # duplicate name
    assert cli("api-tokens", "revoke", "ops", "--config", str(conf)).exit_code == 0
    store = open_api_token_store(backend.url, tmp_path / "data")
    try:
        assert store.verify(token) is None
    finally:
        store.close()
    assert cli("api-tokens", "revoke", "ops", "--config", str(conf)).exit_code == 1


async def test_message_log_over_the_api_and_the_cli_two_tenants(tmp_path: Path, backend: Any) -> None:
    conf = write_conf(tmp_path / "smtpgate.toml", tmp_path / "data", backend)
    tokens = {name: cli("api-tokens", "add", name, *(["--credential", cred] if cred else []), "--config", str(conf))
              .stdout.strip() for name, cred in (("admin", None), ("shop", "shop"), ("club", "club"))}
    config = load_config(str(conf))
    gw = Gateway(config)
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, api]  # no delivery yet: the messages stay spooled
    await gw.start()
    try:
        port = ingress.port("plain")
        for user, pw, sender, to, subject, msgid, camp in (
            ("shop", "pw-shop", "news@shop.example", "x@example.net", "Spring sale", "s1@shop.example", "spring"),
            ("club", "pw-club", "info@club.example", "y@example.net", "Club night", "c1@club.example", "spring"),
        ):
            await aiosmtplib.send(mail(sender, to, subject, msgid, camp), sender=sender, recipients=[to],
                                  hostname="127.0.0.1", port=port, username=user, password=pw,
                                  start_tls=False, use_tls=False)
        await wait_for(lambda: len(gw.events.events(type="accepted")) == 2)
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                doc = await r.json()
            validate_spec(doc)
            c = Checked(http, api.url, doc)
            msgs = "/api/v1/messages"

            # while spooled: the story says so and the raw message is there
            status, page = await c.get(msgs, msgs, tokens["admin"], recipient="X@Example.net")
            assert status == 200 and page["next"] is None
            [shop_msg] = page["messages"]
            qid = shop_msg["queue_id"]
            assert shop_msg["mail_from"] == "news@shop.example" and shop_msg["credential"] == "shop"
            assert shop_msg["recipients"] == [{"address": "x@example.net", "state": "queued",
                                               "updated_at": shop_msg["recipients"][0]["updated_at"]}]
            status, story = await c.get(f"{msgs}/{qid}", msgs + "/{queue_id}", tokens["shop"])
            assert status == 200 and story["spooled"] is True and story["queue"][0]["recipient"] == "x@example.net"
            async with http.get(api.url + story["raw_url"], headers={"Authorization": f"Bearer {tokens['shop']}"}) as r:
                assert r.status == 200 and b"Subject: Spring sale" in await r.read()
            async with http.get(api.url + story["raw_url"], headers={"Authorization": f"Bearer {tokens['club']}"}) as r:
                assert r.status == 404 and (await r.json())["error"]

            delivery = gw.delivery_service(workers=0)
            await delivery.start()
            gw.services.append(delivery)
            await wait_for(lambda: len(gw.events.events(type="delivered")) == 2)

            # the acceptance check: found by recipient, the story shows accepted, the trace and delivered
            status, page = await c.get(msgs, msgs, tokens["admin"], recipient="x@example.net")
            assert [m["queue_id"] for m in page["messages"]] == [qid]
            assert page["messages"][0]["recipients"][0]["state"] == "delivered"
            status, story = await c.get(f"{msgs}/{qid}", msgs + "/{queue_id}", tokens["admin"])
            assert [e["type"] for e in story["events"]] == ["accepted", "delivered"]
            assert story["events"][1]["relay"] and story["events"][1]["dsn"].startswith("2.")
            assert story["spooled"] is False and "raw_url" not in story
            assert story["client_ip"] == "127.0.0.1" and story["tls"] is False and story["size"] > 0
            assert ["Subject", "Spring sale"] in story["headers"]
            assert any(t["plugin"] == "header_validation" for t in story["trace"])
            assert story["message_id"] == "s1@shop.example" and story["campaign_id"] == "spring"
            [copy] = story["recipients"]
            assert ["Subject", "Spring sale"] in copy["final_headers"] and isinstance(copy["processing"], list)
            assert copy["final_headers"][0][0] == "Received"  # the gateway's own trace header, as it left

            # every filter finds the shop's message and only it
            for key, value in (("sender", "NEWS@shop.example"), ("message_id", "<s1@shop.example>"),
                               ("queue_id", qid), ("credential", "shop"), ("state", "delivered"),
                               ("since", "2000-01-01"), ("until", "2999-01-01")):
                status, page = await c.get(msgs, msgs, tokens["shop"], **{key: value})
                assert [m["queue_id"] for m in page["messages"]] == [qid], key
            status, page = await c.get(msgs, msgs, tokens["admin"], until="2000-01-01")
            assert page["messages"] == []
            status, page = await c.get(msgs, msgs, tokens["admin"], campaign="spring", limit="1")
            assert len(page["messages"]) == 1 and page["next"]
            first = page["messages"][0]["queue_id"]
            status, page2 = await c.get(msgs, msgs, tokens["admin"], campaign="spring", limit="1", cursor=page["next"])
            assert len(page2["messages"]) == 1 and page2["next"] is None and page2["messages"][0]["queue_id"] != first
            club_qid = page2["messages"][0]["queue_id"] if first == qid else first

            # tenants: each sees its own messages only; the other's is a 404, not a 403
            for mine, other, my_qid, other_qid in (("shop", "club", qid, club_qid), ("club", "shop", club_qid, qid)):
                status, page = await c.get(msgs, msgs, tokens[mine])
                assert [m["queue_id"] for m in page["messages"]] == [my_qid]
                status, page = await c.get(msgs, msgs, tokens[mine], credential=other)
                assert page["messages"] == []
                status, page = await c.get(msgs, msgs, tokens[mine], queue_id=other_qid)
                assert page["messages"] == []
                status, body = await c.get(f"{msgs}/{other_qid}", msgs + "/{queue_id}", tokens[mine])
                assert status == 404
            status, body = await c.get(f"{msgs}/nope", msgs + "/{queue_id}", tokens["admin"])
            assert status == 404

            # statistics per credential: the same campaign id of two credentials stays two rows
            stats = "/api/v1/stats"
            status, report = await c.get(stats, stats, tokens["admin"], campaign="spring")
            assert [(r["credential"], r["campaign"], r["sent"], r["delivered"]) for r in report["campaigns"]] == [
                ("club", "spring", 1, 1), ("shop", "spring", 1, 1)]
            assert report["totals"]["delivered"] == 2
            status, report = await c.get(stats, stats, tokens["shop"])
            assert [(r["credential"], r["delivered"]) for r in report["campaigns"]] == [("shop", 1)]
            assert report["totals"]["sent"] == 1 and report["days"][0]["credential"] == "shop"
            status, _ = await c.get(stats, stats, tokens["shop"], credential="club")
            assert status == 404
            status, _ = await c.get(stats, stats, tokens["shop"], since="someday")
            assert status == 400

            # bad requests are JSON 400s
            for params in ({"state": "lost"}, {"limit": "0"}, {"limit": "x"}, {"recipients": "x@example.net"},
                           {"cursor": "!!"}, {"since": "yesterday"}):
                status, body = await c.get(msgs, msgs, tokens["admin"], **params)
                assert status == 400, params

            # tokens: only in the Authorization header; a wrong or revoked one is a 401
            status, body = await c.get(msgs, msgs, None, token=tokens["admin"])
            assert status == 401
            status, body = await c.get(msgs, msgs, tokens["admin"] + "x")
            assert status == 401
            assert cli("api-tokens", "revoke", "club", "--config", str(conf)).exit_code == 0
            status, body = await c.get(msgs, msgs, tokens["club"])
            assert status == 401

            # the CLI twins tell the same story
            found = cli("messages", "search", "--recipient", "x@example.net", "--config", str(conf))
            assert found.exit_code == 0 and qid in found.stdout and club_qid not in found.stdout
            shown = cli("messages", "show", qid, "--config", str(conf))
            assert shown.exit_code == 0
            assert " accepted " in shown.stdout and " delivered " in shown.stdout and "header_validation" in shown.stdout
            assert "headers of the copy for x@example.net (as it left):" in shown.stdout
            assert cli("messages", "show", "nope", "--config", str(conf)).exit_code == 1

            # a client that keeps failing is throttled (after the checks above: it blocks 127.0.0.1)
            statuses = [(await c.get(msgs, msgs, "sgt_bad_token"))[0] for _ in range(12)]
            assert statuses[-1] == 429 and set(statuses) <= {401, 429}
            assert {("GET", "/api/v1/messages", "200"), ("GET", "/api/v1/messages", "400"),
                    ("GET", "/api/v1/messages", "401"), ("GET", "/api/v1/messages", "429"),
                    ("GET", "/api/v1/messages/{queue_id}", "200"), ("GET", "/api/v1/messages/{queue_id}", "404")
                    } <= c.checked
    finally:
        await gw.stop(2.0)


def test_serve_starts_the_api_on_its_own_listener(tmp_path: Path) -> None:
    config = load_config(None)
    assert (config.api.listen_address, config.api.listen_port) == ("127.0.0.1", 8081)
    assert config.api.listen_port != config.tracking.listen_port
    gw = Gateway(config.model_copy(update={"gateway": config.gateway.model_copy(update={"data_dir": tmp_path})}))
    gw.build_services(workers=1)
    try:
        assert [s.name for s in gw.services].count("api") == 1
    finally:
        asyncio.run(gw.stop(0))


async def test_suppressions_and_queue_actions_are_tenant_scoped(tmp_path: Path) -> None:
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(TOML.format(data=tmp_path / "data"))
    tokens = {name: cli("api-tokens", "add", name, *(["--credential", cred] if cred else []), "--config", str(conf))
              .stdout.strip() for name, cred in (("admin", None), ("shop", "shop"), ("club", "club"))}
    gw = Gateway(load_config(str(conf)))
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, api]  # no delivery: messages stay in the queue for the queue actions
    await gw.start()
    try:
        sup, one = "/api/v1/suppressions", "/api/v1/suppressions/{address}"
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                c = Checked(http, api.url, await r.json())

            # each tenant adds to its own scope; the administrator adds globally or for a credential
            status, added = await c.call("POST", sup, sup, tokens["shop"], body={"address": "Gone@Example.net"})
            assert status == 201 and added == {"address": "gone@example.net", "credential": "shop",
                                               "reason": "manual", "added": True}
            status, again = await c.call("POST", sup, sup, tokens["shop"], body={"address": "gone@example.net"})
            assert status == 200 and again["added"] is False
            status, _ = await c.call("POST", sup, sup, tokens["club"], body={"address": "=cmd@example.net",
                                                                             "reason": "asked by phone"})
            assert status == 201
            status, _ = await c.call("POST", sup, sup, tokens["admin"], body={"address": "all@example.net"})
            assert status == 201 and gw.events.is_suppressed("all@example.net", "club")
            assert gw.events.is_suppressed("gone@example.net", "shop")
            assert not gw.events.is_suppressed("gone@example.net", "club")
            status, _ = await c.call("POST", sup, sup, tokens["club"], body={"address": "x@example.net",
                                                                             "credential": "shop"})
            assert status == 404  # another tenant's scope
            for bad in ({"address": "not an address"}, {"address": "a@b.c", "extra": 1}, {"address": "a@b.c",
                        "reason": "x" * 201}, ["a@b.c"]):
                status, _ = await c.call("POST", sup, sup, tokens["shop"], body=bad)
                assert status == 400, bad
            status, _ = await c.call("POST", sup, sup, tokens["shop"], data=b"{" + b" " * 70000 + b"}")
            assert status == 413  # the body limit

            status, listed = await c.get(sup, sup, tokens["shop"])
            assert [s["address"] for s in listed["suppressions"]] == ["gone@example.net"]
            status, _ = await c.get(sup, sup, tokens["shop"], credential="club")
            assert status == 404
            status, listed = await c.get(sup, sup, tokens["admin"])
            assert {(s["address"], s["credential"]) for s in listed["suppressions"]} == {
                ("gone@example.net", "shop"), ("=cmd@example.net", "club"), ("all@example.net", None)}
            async with http.get(api.url + "/api/v1/suppressions.csv",
                                headers={"Authorization": f"Bearer {tokens['club']}"}) as r:
                assert r.status == 200 and r.content_type == "text/csv"
                rows = (await r.text()).splitlines()
            assert rows[0] == "address,credential,reason,suppressed_at"
            assert rows[1].startswith("'=cmd@example.net,club,asked by phone,") and len(rows) == 2

            status, _ = await c.call("DELETE", "/api/v1/suppressions/gone@example.net", one, tokens["club"])
            assert status == 404 and gw.events.is_suppressed("gone@example.net", "shop")
            status, _ = await c.call("DELETE", "/api/v1/suppressions/gone@example.net", one, tokens["shop"])
            assert status == 204 and not gw.events.is_suppressed("gone@example.net", "shop")
            status, _ = await c.call("DELETE", "/api/v1/suppressions/all@example.net", one, tokens["shop"])
            assert status == 404  # the global list is the administrator's
            status, _ = await c.call("DELETE", "/api/v1/suppressions/all@example.net", one, tokens["admin"])
            assert status == 204

            # queue actions on messages still spooled (delivery is not running yet)
            port = ingress.port("plain")
            for n in (1, 2):
                await aiosmtplib.send(mail("news@shop.example", f"q{n}@example.net", "Queued", f"q{n}@shop.example",
                                           "spring"), sender="news@shop.example", recipients=[f"q{n}@example.net"],
                                      hostname="127.0.0.1", port=port, username="shop", password="pw-shop",
                                      start_tls=False, use_tls=False)
            await wait_for(lambda: len(gw.events.events(type="accepted")) == 2)
            held_qid, gone_qid = (gw.events.events(type="accepted", recipient=f"q{n}@example.net")[0].event.queue_id
                                  for n in (1, 2))
            msg = "/api/v1/messages/{queue_id}"
            for verb, action in (("POST", "/retry"), ("POST", "/hold"), ("POST", "/release"), ("DELETE", "")):
                status, _ = await c.call(verb, f"/api/v1/messages/{held_qid}{action}", msg + action, tokens["club"])
                assert status == 404, action  # another tenant's message
            status, body = await c.call("POST", f"/api/v1/messages/{held_qid}/hold", msg + "/hold", tokens["shop"])
            assert status == 200 and body == {"queue_id": held_qid, "held": 1}
            assert [r["state"] for r in gw.spool.show(held_qid)["recipients"]] == ["held"]
            status, body = await c.call("POST", f"/api/v1/messages/{gone_qid}/retry", msg + "/retry", tokens["shop"])
            assert status == 200 and body == {"queue_id": gone_qid, "due_now": 1}
            status, body = await c.call("DELETE", f"/api/v1/messages/{gone_qid}", msg, tokens["shop"])
            assert status == 200 and body == {"queue_id": gone_qid, "discarded": ["q2@example.net"]}
            assert gw.spool.show(gone_qid) is None
            status, story = await c.get(f"/api/v1/messages/{gone_qid}", msg, tokens["shop"])
            assert [e["type"] for e in story["events"]] == ["accepted", "discarded"]
            assert story["recipients"][0]["state"] == "discarded" and "'shop'" in story["events"][1]["reason"]
            status, _ = await c.call("DELETE", f"/api/v1/messages/{gone_qid}", msg, tokens["shop"])
            assert status == 404

            # a held message is not delivered until it is released
            delivery = gw.delivery_service(workers=0)
            await delivery.start()
            gw.services.append(delivery)
            await asyncio.sleep(1.0)  # twenty poll intervals
            assert gw.events.events(type="delivered") == []
            assert [r["state"] for r in gw.spool.show(held_qid)["recipients"]] == ["held"]
            status, body = await c.call("POST", f"/api/v1/messages/{held_qid}/release", msg + "/release",
                                        tokens["admin"])
            assert status == 200 and body == {"queue_id": held_qid, "released": 1}
            await wait_for(lambda: len(gw.events.events(type="delivered")) == 1)
            status, _ = await c.call("POST", f"/api/v1/messages/{held_qid}/hold", msg + "/hold", tokens["shop"])
            assert status == 404  # delivered: no longer in the queue
    finally:
        await gw.stop(2.0)


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


async def test_credentials_over_the_api_tenant_scoped_and_used_for_smtp_auth(tmp_path: Path) -> None:
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(TOML.format(data=tmp_path / "data"))
    admin = cli("api-tokens", "add", "admin", "--config", str(conf)).stdout.strip()
    shop = cli("api-tokens", "add", "shop", "--credential", "shop", "--config", str(conf)).stdout.strip()
    gw = Gateway(load_config(str(conf)))
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, api]
    await gw.start()
    try:
        port = ingress.port("plain")
        creds, one = "/api/v1/credentials", "/api/v1/credentials/{name}/"
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                c = Checked(http, api.url, await r.json())
            status, added = await c.call("POST", creds, creds, admin, body={"name": "newapp", "kind": "apikey",
                                                                            "features": {"trackclicks": False}})
            assert status == 201 and added["secret"].startswith("sg_") and added["source"] == "store"
            assert added["features"] == {"trackclicks": False}
            first = added["secret"]
            assert await smtp_login_works(port, "apikey", first)
            for body, expected in (({"name": "newapp"}, 409), ({"name": "shop"}, 409), ({"name": "x", "kind": "ip"}, 400),
                                   ({"name": "x", "max_recipients": "5"}, 400), ({"name": "x", "secret": "s"}, 400)):
                status, _ = await c.call("POST", creds, creds, admin, body=body)
                assert status == expected, body

            # a tenant sees its own credential only and changes nothing else
            status, listed = await c.get(creds, creds, shop)
            assert [(x["name"], x["source"]) for x in listed["credentials"]] == [("shop", "config")]
            assert "secret" not in listed["credentials"][0] and "secret_hash" not in listed["credentials"][0]
            status, listed = await c.get(creds, creds, admin)
            assert {x["name"] for x in listed["credentials"]} == {"shop", "club", "newapp"}
            status, _ = await c.call("POST", creds, creds, shop, body={"name": "mine"})
            assert status == 404
            for action in ("disable", "enable", "rotate"):
                status, _ = await c.call("POST", f"{creds}/newapp/{action}", one + action, shop)
                assert status == 404, action
            status, _ = await c.call("POST", f"{creds}/shop/rotate", one + "rotate", shop)
            assert status == 409  # declared in the config file
            status, _ = await c.call("POST", f"{creds}/nobody/rotate", one + "rotate", admin)
            assert status == 404

            # the credential's own tenant rotates its key: the old one stops working at once
            newapp = cli("api-tokens", "add", "newapp", "--credential", "newapp", "--config", str(conf)).stdout.strip()
            status, rotated = await c.call("POST", f"{creds}/newapp/rotate", one + "rotate", newapp)
            assert status == 200 and rotated["secret"] != first
            assert not await smtp_login_works(port, "apikey", first)
            assert await smtp_login_works(port, "apikey", rotated["secret"])

            status, row = await c.call("POST", f"{creds}/newapp/disable", one + "disable", admin)
            assert status == 200 and row["disabled"] is True
            assert not await smtp_login_works(port, "apikey", rotated["secret"])
            status, row = await c.call("POST", f"{creds}/newapp/enable", one + "enable", admin)
            assert status == 200 and row["disabled"] is False
            assert await smtp_login_works(port, "apikey", rotated["secret"])
    finally:
        await gw.stop(2.0)


async def test_fuzzed_requests_get_no_5xx_and_every_answer_matches_the_schema(tmp_path: Path) -> None:
    """Random and hostile query strings, paths and bodies on every operation of the document: never a
    5xx, and every JSON answer (errors included) is what the document says for its status."""
    import random

    conf = tmp_path / "smtpgate.toml"
    conf.write_text(TOML.format(data=tmp_path / "data"))
    admin = cli("api-tokens", "add", "admin", "--config", str(conf)).stdout.strip()
    shop = cli("api-tokens", "add", "shop", "--credential", "shop", "--config", str(conf)).stdout.strip()
    gw = Gateway(load_config(str(conf)))
    api = gw.api_service(port=0)
    gw.services = [api]
    await gw.start()
    rnd = random.Random(12)
    nasty = ["", " ", "'", "\"", "%", "\x00", "\u202e", "é" * 300, "a" * 5000, "-1", "0", "1e309", "null", "[]",
             "2026-13-45", "9999-01-01", "x@example.net", "<a@b>", "../..", "%2e%2e", "sgt_x_y", "\r\nX: y"]

    def value() -> str:
        return rnd.choice(nasty) if rnd.random() < 0.6 else "".join(chr(rnd.randrange(32, 0x2FFF))
                                                                   for _ in range(rnd.randrange(0, 40)))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                doc = await r.json()
            operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
                          if path != "/api/v1/openapi.json"]
            seen: dict[tuple[str, str, int], int] = {}
            for i in range(400):
                path, method, op = rnd.choice(operations)
                concrete = path
                for p in op.get("parameters", []):
                    if p["in"] == "path":
                        concrete = concrete.replace("{" + p["name"] + "}", aiohttp.helpers.quote(value(), safe="")
                                                    or "x")
                names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"] + ["bogus"]
                params = {rnd.choice(names): value() for _ in range(rnd.randrange(0, 4))}
                body: Any = None
                if "requestBody" in op:
                    body = rnd.choice([{"address": value()}, {"name": value(), "kind": value()}, [value()], value(),
                                       {"address": value(), "reason": value(), "credential": value()}, None,
                                       {"from": value(), "to": [value()], "subject": value(), "text": value(),
                                        "credential": rnd.choice(["shop", value()])},
                                       {"mail_from": value(), "rcpt_to": [value()], "data": value()}])
                # a few requests without a token (more would trip the failure throttle for the rest of the run)
                token = None if i % 50 == 7 else rnd.choice([admin, shop])
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.request(method.upper(), api.url + concrete, params=params, headers=headers,
                                        json=body) as r:
                    assert r.status < 500, (method, concrete, params, r.status)
                    seen[(method, path, r.status)] = seen.get((method, path, r.status), 0) + 1
                    if r.content_type != "application/json":
                        # raw/CSV bodies, 204; and the HTTP parser's own plain 400 for an over-long request line
                        too_long = r.status == 400 and len(str(r.url)) > 4000
                        assert r.status in (200, 204) or too_long, (concrete[:80], r.status)
                        continue
                    got = await r.json()
                if concrete.count("/") != path.count("/") or r.status == 405:
                    assert r.status in (404, 405) and set(got) == {"error"}  # a quoted "/" made another route
                    continue
                responses = op["responses"]
                assert str(r.status) in responses, (method, path, r.status, got)
                schema = {**responses[str(r.status)]["content"]["application/json"]["schema"],
                          "components": doc["components"]}
                errors = [e.message for e in Draft202012Validator(schema).iter_errors(got)]
                assert errors == [], (method, concrete, params, r.status, errors)
            assert {200, 400, 401, 404} <= {k[2] for k in seen} and 429 not in {k[2] for k in seen}, seen
    finally:
        await gw.stop(2.0)


async def test_webhook_endpoints_and_deliveries_are_tenant_scoped(tmp_path: Path) -> None:
    conf = tmp_path / "smtpgate.toml"
    text = TOML.format(data=tmp_path / "data").replace(
        'secret = "pw-shop"\n', 'secret = "pw-shop"\nwebhooks = ["http://127.0.0.1:9/shop-hook"]\n')
    conf.write_text(text + '[webhooks]\nurls = ["http://127.0.0.1:9/all"]\n')
    tokens = {name: cli("api-tokens", "add", name, *(["--credential", cred] if cred else []), "--config", str(conf))
              .stdout.strip() for name, cred in (("admin", None), ("shop", "shop"), ("club", "club"))}
    gw = Gateway(load_config(str(conf)))
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, api]  # no webhook sender: the deliveries stay pending
    await gw.start()
    try:
        for user in ("shop", "club"):
            await aiosmtplib.send(mail(f"a@{user}.example", "w@example.net", "Hook", f"w@{user}.example", "hooks"),
                                  sender=f"a@{user}.example", recipients=["w@example.net"], hostname="127.0.0.1",
                                  port=ingress.port("plain"), username=user, password=f"pw-{user}",
                                  start_tls=False, use_tls=False)
        await wait_for(lambda: len(gw.events.events(type="accepted")) == 2)
        hooks, deliveries = "/api/v1/webhooks", "/api/v1/webhooks/deliveries"
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                c = Checked(http, api.url, await r.json())
            status, body = await c.get(hooks, hooks, tokens["admin"])
            assert [(e["url"], e["credential"], e["source"], e["id"]) for e in body["endpoints"]] == [
                ("http://127.0.0.1:9/all", None, "config", None), ("http://127.0.0.1:9/shop-hook", "shop", "config", None)]
            status, body = await c.get(hooks, hooks, tokens["shop"])
            assert [(e["url"], e["credential"]) for e in body["endpoints"]] == [("http://127.0.0.1:9/shop-hook", "shop")]
            status, body = await c.get(hooks, hooks, tokens["club"])
            assert body["endpoints"] == []

            status, body = await c.get(deliveries, deliveries, tokens["admin"])
            assert sorted((d["credential"], d["url"]) for d in body["deliveries"]) == [
                ("club", "http://127.0.0.1:9/all"), ("shop", "http://127.0.0.1:9/all"),
                ("shop", "http://127.0.0.1:9/shop-hook")]
            assert {d["state"] for d in body["deliveries"]} == {"pending"} and body["deliveries"][0]["event"] == "accepted"
            status, body = await c.get(deliveries, deliveries, tokens["shop"])
            assert {d["credential"] for d in body["deliveries"]} == {"shop"} and len(body["deliveries"]) == 2
            status, body = await c.get(deliveries, deliveries, tokens["club"], limit="1")
            assert [(d["credential"], d["url"]) for d in body["deliveries"]] == [("club", "http://127.0.0.1:9/all")]
            status, _ = await c.get(deliveries, deliveries, tokens["club"], credential="shop")
            assert status == 404
            status, _ = await c.get(deliveries, deliveries, tokens["admin"], limit="0")
            assert status == 400
    finally:
        await gw.stop(2.0)


async def test_one_node_accepts_and_another_finds_the_message_and_honours_its_tokens(
        tmp_path: Path, pg_url: str) -> None:
    """Two nodes on one PostgreSQL, each with its own (empty) data dir: node A's acceptance is in node
    B's `messages search|show` and API; a token added on A works on B; revoked on B, A refuses it."""
    shared = type("Shared", (), {"url": pg_url})()
    conf_a = write_conf(tmp_path / "a.toml", tmp_path / "a", shared)
    conf_b = write_conf(tmp_path / "b.toml", tmp_path / "b", shared)
    token = cli("api-tokens", "add", "ops", "--config", str(conf_a)).stdout.strip()
    node_a, node_b = Gateway(load_config(str(conf_a))), Gateway(load_config(str(conf_b)))
    ingress, api_a = node_a.ingress_service(), node_a.api_service(port=0)
    node_a.services = [ingress, api_a]
    api_b = node_b.api_service(port=0)
    node_b.services = [api_b]
    await node_a.start()
    await node_b.start()
    try:
        await aiosmtplib.send(mail("news@shop.example", "x@example.net", "Spring sale", "s1@shop.example", "spring"),
                              sender="news@shop.example", recipients=["x@example.net"], hostname="127.0.0.1",
                              port=ingress.port("plain"), username="shop", password="pw-shop",
                              start_tls=False, use_tls=False)
        found = cli("messages", "search", "--recipient", "x@example.net", "--json", "--config", str(conf_b))
        assert found.exit_code == 0, found.output
        import json
        [msg] = json.loads(found.stdout)["messages"]
        qid = msg["queue_id"]
        assert msg["mail_from"] == "news@shop.example" and msg["recipients"][0]["state"] == "queued"
        shown = cli("messages", "show", qid, "--config", str(conf_b))
        assert shown.exit_code == 0 and "in queue:    yes" in shown.stdout and " accepted " in shown.stdout
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(api_b.url + "/api/v1/messages", params={"recipient": "x@example.net"},
                                headers=auth) as r:
                assert r.status == 200 and [m["queue_id"] for m in (await r.json())["messages"]] == [qid]
            async with http.get(f"{api_b.url}/api/v1/messages/{qid}", headers=auth) as r:
                story = await r.json()
                assert r.status == 200 and story["spooled"] is True and story["subject"] == "Spring sale"
            assert cli("api-tokens", "revoke", "ops", "--config", str(conf_b)).exit_code == 0
            async with http.get(api_a.url + "/api/v1/messages", headers=auth) as r:
                assert r.status == 401  # at the next request: token look-ups are not cached
        assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())  # node B: nothing on disk
    finally:
        await node_a.stop(2.0)
        await node_b.stop(2.0)
