"""Every endpoint of the management API across two tenants, from one table: without a token it is a
401; a tenant's token gets 404 for the other tenant's objects (and the object is untouched) and lists
only its own; an administrator's token sees and acts on both. The table must name every operation
of the served OpenAPI document, so a new endpoint without a row here fails this test. Also: bodies
over the limit are a JSON 413 on every operation that takes one, and no token or secret reaches a
log line or a URL."""

from __future__ import annotations

import base64
import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator

from pipeline.app.gateway import Gateway
from pipeline.config import load_config
from plugins.dkim_sign.keys import generate_key
from tests.support.egress_net import ZoneServer
from tests.test_api import TOML, cli, mail, wait_for
from tests.test_api_webhooks_domains import send

TENANTS = ("shop", "club")
DOMAINS = """
[plugins.dkim_sign.domains."shop.example"]
selector = "s1"
key_file = "{shop}"
[plugins.dkim_sign.domains."club.example"]
selector = "c1"
key_file = "{club}"
"""

Labels = Callable[[Any], set[str]]


@dataclass
class Row:
    """One operation: how to address tenant ``t``'s object, what each token gets, how to read a list."""

    method: str
    template: str
    path: Callable[[str], str]
    own: int  # the tenant on its own object
    admin: int  # the administrator on the other tenant's object
    other: int = 404  # the tenant on the other tenant's object
    params: Callable[[str], dict[str, str]] = lambda t: {}
    body: Callable[[str], Any] | None = None
    labels: Labels | None = None  # a list: which tenants' objects an answer holds
    last: bool = False  # removes its object: run after the rows that use it


class World:
    """The running gateway, its tokens and each tenant's objects."""

    def __init__(self) -> None:
        self.qid: dict[str, str] = {}
        self.hook: dict[str, str] = {}
        self.tokens: dict[str, str] = {}


def csv_labels(text: str) -> set[str]:
    return {r["credential"] for r in csv.DictReader(io.StringIO(text))}


def table(w: World) -> list[Row]:
    msg = lambda t: f"/api/v1/messages/{w.qid[t]}"  # noqa: E731
    hook = lambda t: f"/api/v1/webhooks/{w.hook[t]}"  # noqa: E731
    scoped = lambda t: {"credential": t}  # noqa: E731
    return [
        Row(
            "GET",
            "/api/v1/messages",
            lambda t: "/api/v1/messages",
            200,
            200,
            200,
            params=scoped,
            labels=lambda b: {m["credential"] for m in b["messages"]},
        ),
        Row("GET", "/api/v1/messages/{queue_id}", msg, 200, 200),
        Row("GET", "/api/v1/messages/{queue_id}/raw", lambda t: msg(t) + "/raw", 200, 200),
        Row("POST", "/api/v1/messages/{queue_id}/hold", lambda t: msg(t) + "/hold", 200, 200),
        Row("POST", "/api/v1/messages/{queue_id}/release", lambda t: msg(t) + "/release", 200, 200),
        Row("POST", "/api/v1/messages/{queue_id}/retry", lambda t: msg(t) + "/retry", 200, 200),
        Row("DELETE", "/api/v1/messages/{queue_id}", msg, 200, 200, last=True),
        Row(
            "POST",
            "/api/v1/messages",
            lambda t: "/api/v1/messages",
            202,
            202,
            body=lambda t: {
                "mail_from": f"api@{t}.example",
                "rcpt_to": [f"{t}-api@example.net"],
                "data": base64.b64encode(
                    mail(f"api@{t}.example", f"{t}-api@example.net", "API", f"api@{t}.example", "api")
                ).decode(),
                "credential": t,
            },
        ),
        Row(
            "GET",
            "/api/v1/events",
            lambda t: "/api/v1/events",
            200,
            200,
            params=scoped,
            labels=lambda b: {e["credential"] for e in b["events"]},
        ),
        Row(
            "GET",
            "/api/v1/stats",
            lambda t: "/api/v1/stats",
            200,
            200,
            params=scoped,
            labels=lambda b: {d["credential"] for d in b["days"]},
        ),
        Row(
            "GET",
            "/api/v1/credentials",
            lambda t: "/api/v1/credentials",
            200,
            200,
            200,
            labels=lambda b: {c["name"] for c in b["credentials"]},
        ),
        Row(
            "POST",
            "/api/v1/credentials",
            lambda t: "/api/v1/credentials",
            404,
            201,
            404,
            body=lambda t: {"name": f"new-{t}"},
        ),
        Row(
            "POST",
            "/api/v1/credentials/{name}/disable",
            lambda t: f"/api/v1/credentials/{t}/disable",
            404,
            409,
        ),
        Row(
            "POST", "/api/v1/credentials/{name}/enable", lambda t: f"/api/v1/credentials/{t}/enable", 404, 409
        ),
        Row(
            "POST", "/api/v1/credentials/{name}/rotate", lambda t: f"/api/v1/credentials/{t}/rotate", 409, 409
        ),
        Row(
            "GET",
            "/api/v1/webhooks",
            lambda t: "/api/v1/webhooks",
            200,
            200,
            200,
            labels=lambda b: {e["credential"] for e in b["endpoints"]},
        ),
        Row(
            "POST",
            "/api/v1/webhooks",
            lambda t: "/api/v1/webhooks",
            201,
            201,
            body=lambda t: {"url": f"http://127.0.0.1:9/more-{t}-{len(w.tokens)}", "credential": t},
        ),
        Row("POST", "/api/v1/webhooks/{id}/test", lambda t: hook(t) + "/test", 200, 200),
        Row("GET", "/api/v1/webhooks/{id}/deliveries", lambda t: hook(t) + "/deliveries", 200, 200),
        Row(
            "PATCH",
            "/api/v1/webhooks/{id}",
            hook,
            200,
            200,
            body=lambda t: {"events": ["delivered", "bounced"]},
        ),
        Row("DELETE", "/api/v1/webhooks/{id}", hook, 204, 204, last=True),
        Row(
            "GET",
            "/api/v1/webhooks/deliveries",
            lambda t: "/api/v1/webhooks/deliveries",
            200,
            200,
            params=scoped,
            labels=lambda b: {d["credential"] for d in b["deliveries"]},
        ),
        Row(
            "GET",
            "/api/v1/suppressions",
            lambda t: "/api/v1/suppressions",
            200,
            200,
            params=scoped,
            labels=lambda b: {s["credential"] for s in b["suppressions"]},
        ),
        Row(
            "GET",
            "/api/v1/suppressions.csv",
            lambda t: "/api/v1/suppressions.csv",
            200,
            200,
            params=scoped,
            labels=csv_labels,
        ),
        Row(
            "POST",
            "/api/v1/suppressions",
            lambda t: "/api/v1/suppressions",
            201,
            201,
            body=lambda t: {"address": f"{t}-more@example.net", "credential": t},
        ),
        Row(
            "DELETE",
            "/api/v1/suppressions/{address}",
            lambda t: f"/api/v1/suppressions/{t}-x@example.net",
            204,
            204,
            params=scoped,
            last=True,
        ),
        Row(
            "GET",
            "/api/v1/domains",
            lambda t: "/api/v1/domains",
            200,
            200,
            200,
            labels=lambda b: {d["domain"].split(".")[0] for d in b["domains"]},
        ),
        Row("GET", "/api/v1/domains/{domain}", lambda t: f"/api/v1/domains/{t}.example", 200, 200),
        Row(
            "GET", "/api/v1/domains/{domain}/check", lambda t: f"/api/v1/domains/{t}.example/check", 200, 200
        ),
    ]


async def start(tmp_path: Path, zone: ZoneServer) -> tuple[Gateway, Any, Any, World]:
    data = tmp_path / "data"
    keys = {t: generate_key(f"{t}.example", t[0] + "1", data / "dkim")[0] for t in TENANTS}
    text = TOML.format(data=data).replace("[api]\n", "[api]\ntenant_webhook_private = true\n")
    for t in TENANTS:
        text = text.replace(
            f'secret = "pw-{t}"\n', f'secret = "pw-{t}"\nallowed_sender_domains = ["{t}.example"]\n'
        )
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(
        text + DOMAINS.format(**keys) + f'[dns]\nnameservers = ["127.0.0.1"]\nport = {zone.port}\n'
        "timeout = 2.0\n"
    )
    w = World()
    w.tokens = {
        name: cli(
            "api-tokens", "add", name, *(["--credential", cred] if cred else []), "--config", str(conf)
        ).stdout.strip()
        for name, cred in (("admin", None), ("shop", "shop"), ("club", "club"))
    }
    gw = Gateway(load_config(str(conf)))
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, api]  # no delivery: messages stay in the queue for the queue actions
    await gw.start()
    return gw, ingress, api, w


async def test_every_endpoint_scopes_two_tenants_and_wants_a_token(tmp_path: Path) -> None:
    zone = await ZoneServer().start()
    gw, ingress, api, w = await start(tmp_path, zone)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                doc = await r.json()
            rows = table(w)
            operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
            assert operations - {("GET", "/api/v1/openapi.json")} == {(r.method, r.template) for r in rows}

            async def call(
                row: Row, t: str, token: str | None, params: dict[str, str] | None = None
            ) -> tuple[int, Any]:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                body = row.body(t) if row.body else None
                async with http.request(
                    row.method,
                    api.url + row.path(t),
                    headers=headers,
                    json=body,
                    params=row.params(t) if params is None else params,
                ) as r:
                    if r.status == 204:
                        return 204, None
                    if r.content_type == "application/json":
                        got = await r.json()
                        spec = doc["paths"][row.template][row.method.lower()]["responses"][str(r.status)]
                        schema = {
                            **spec["content"]["application/json"]["schema"],
                            "components": doc["components"],
                        }
                        assert list(Draft202012Validator(schema).iter_errors(got)) == [], (row.template, got)
                        return r.status, got
                    return r.status, await r.text()

            # each tenant's objects: a suppression, a webhook endpoint, a spooled message (its event's deliveries)
            for t in TENANTS:
                async with http.post(
                    api.url + "/api/v1/suppressions",
                    json={"address": f"{t}-x@example.net"},
                    headers={"Authorization": f"Bearer {w.tokens[t]}"},
                ) as r:
                    assert r.status == 201
                async with http.post(
                    api.url + "/api/v1/webhooks",
                    json={"url": f"http://127.0.0.1:9/{t}"},
                    headers={"Authorization": f"Bearer {w.tokens[t]}"},
                ) as r:
                    assert r.status == 201
                    w.hook[t] = (await r.json())["id"]
            port = ingress.port("plain")
            for n, t in enumerate(TENANTS):
                await send(port, t, f"{t}@example.net", n)
            await wait_for(lambda: len(gw.events.events(type="accepted")) == 2)
            for t in TENANTS:
                [accepted] = gw.events.events(type="accepted", recipient=f"{t}@example.net")
                w.qid[t] = accepted.event.queue_id or ""

            for n, row in enumerate(sorted(rows, key=lambda r: r.last)):
                where = f"{row.method} {row.template}"
                # without a token: 401 (each from its own loopback address: failures are throttled per address)
                connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{10 + n}", 0))
                async with (
                    aiohttp.ClientSession(connector=connector) as anonymous,
                    anonymous.request(
                        row.method, api.url + row.path("club"), json=row.body("club") if row.body else None
                    ) as r,
                ):
                    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), where
                    assert set(await r.json()) == {"error"}
                for me, them in (("shop", "club"), ("club", "shop")):
                    if row.labels is None:
                        status, _ = await call(row, them, w.tokens[me])
                        assert status == row.other, (where, me)
                    else:  # a list: its own objects only, and asking for the other's scope is a 404 (or nothing)
                        status, got = await call(row, me, w.tokens[me], params={})
                        assert status == row.own and row.labels(got) == {me}, (where, me, got)
                        status, got = await call(row, them, w.tokens[me])
                        assert status == row.other and (status == 404 or row.labels(got) <= {me}), (where, me)
                if row.last:  # the 404s above changed nothing
                    assert all(still_there(gw, w, row, t) for t in TENANTS), where
                status, got = await call(row, "shop", w.tokens["shop"])
                assert status == row.own, (where, status, got)
                status, got = await call(row, "club", w.tokens["admin"])
                assert status == row.admin, (where, status, got)
                if row.labels is not None:
                    status, got = await call(row, "club", w.tokens["admin"], params={})
                    assert {"shop", "club"} <= row.labels(got), (where, got)
    finally:
        await gw.stop(2.0)
        zone.close()


def still_there(gw: Gateway, w: World, row: Row, t: str) -> bool:
    """Whether tenant ``t``'s object of a removing row is still in place (read from the stores)."""
    if row.template.startswith("/api/v1/messages"):
        return gw.spool.show(w.qid[t]) is not None
    if row.template.startswith("/api/v1/webhooks"):
        return gw.webhook_endpoints.get(w.hook[t]) is not None
    return bool(gw.events.is_suppressed(f"{t}-x@example.net", t))


async def test_bodies_over_the_limit_are_a_json_413_and_no_secret_reaches_a_log_or_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    zone = await ZoneServer().start()
    gw, ingress, api, w = await start(tmp_path, zone)
    caplog.set_level(logging.DEBUG)
    seen_urls: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                doc = await r.json()
            admin = {"Authorization": f"Bearer {w.tokens['admin']}"}
            with_body = [
                (p, m) for p, item in doc["paths"].items() for m, op in item.items() if "requestBody" in op
            ]
            assert {p for p, _ in with_body} == {
                "/api/v1/credentials",
                "/api/v1/suppressions",
                "/api/v1/webhooks",
                "/api/v1/webhooks/{id}",
                "/api/v1/messages",  # the send: its own, larger limit (tests/test_api_send.py)
            }
            async with http.post(
                api.url + "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, headers=admin
            ) as r:
                added = await r.json()  # a real endpoint: an unknown id is a 404 before the body is read
                hook = added["id"]
            for path, method in with_body:
                if path == "/api/v1/messages":
                    continue
                big = b'{"name": "' + b"x" * 70_000 + b'"}'
                async with http.request(
                    method,
                    api.url + path.replace("{id}", hook),
                    data=big,
                    headers={**admin, "Content-Type": "application/json"},
                ) as r:
                    assert r.status == 413 and r.content_type == "application/json", path
                    assert set(await r.json()) == {"error"}
                    assert "413" in doc["paths"][path][method]["responses"]

            # secrets the API hands out or receives: tokens, a new credential's key, a rotated one
            secrets = [*w.tokens.values(), added["secret"]]
            async with http.post(api.url + "/api/v1/credentials", json={"name": "app2"}, headers=admin) as r:
                secrets.append((await r.json())["secret"])
                seen_urls.append(str(r.url))
            async with http.post(api.url + "/api/v1/credentials/app2/rotate", headers=admin) as r:
                secrets.append((await r.json())["secret"])
                seen_urls.append(str(r.url))
            for bad in ("sgt_nope_" + "A" * 43, w.tokens["shop"] + "x"):
                async with http.get(
                    api.url + "/api/v1/messages", headers={"Authorization": f"Bearer {bad}"}
                ) as r:
                    assert r.status == 401
                secrets.append(bad)
            async with http.get(api.url + "/api/v1/messages", params={"token": w.tokens["admin"]}) as r:
                assert r.status == 401  # a token in the query string is not read
            async with http.get(api.url + "/api/v1/messages", headers=admin) as r:
                assert r.status == 200
            async with http.get(
                api.url + "/api/v1/messages", headers={"Authorization": w.tokens["admin"]}
            ) as r:
                assert r.status == 401  # not as a bare header value either: only "Bearer <token>"
            async with http.get(
                api.url + "/api/v1/messages",
                cookies={"token": w.tokens["admin"], "session": w.tokens["admin"]},
            ) as r:
                assert r.status == 401  # nor as a cookie (the console's session cookie is another engineer's)
        logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
        assert "api: rejected a request" in logged  # the failures were logged, without their tokens
        for secret in secrets:
            # nor its random tail alone (the last 16 characters: splitting at "_" could leave one
            # letter, since URL-safe base64 contains "_", and a letter is in any log)
            assert secret not in logged and secret[-16:] not in logged
            assert all(secret not in u for u in seen_urls)
        for path, item in doc["paths"].items():
            for op in item.values():
                assert all(
                    p["in"] != "query" or p["name"] not in ("token", "secret", "key")
                    for p in op.get("parameters", [])
                ), path
    finally:
        await gw.stop(2.0)
        zone.close()
