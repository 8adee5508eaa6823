"""The HTTP send API (``POST /api/v1/messages``) end to end: a real gateway (API on an ephemeral port,
real SQLite files, delivery over SMTP into a real aiosmtpd sink), real HTTP requests with aiohttp,
each answer checked against the OpenAPI document, and each delivered message checked with stock
dkimpy and the standard library's parser."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jsonschema import Draft202012Validator

from pipeline.accounts.api_tokens import ApiTokenStore
from pipeline.app.gateway import Gateway
from pipeline.config import parse_config
from pipeline.spool.sqlite import SqliteSpool
from plugins.dkim_sign.keys import dns_txt_value
from tests.support.smtp_sink import FAST_RETRIES, SinkHandler, smtp_egress
from tests.support.waiting import wait_for

MSGS = "/api/v1/messages"


def make_key(tmp_path: Path) -> tuple[Path, dict[bytes, bytes]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "shop.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path, {b"s1._domainkey.shop.example.": dns_txt_value(key).encode()}


def gateway_config(tmp_path: Path, sink_port: int, key: Path, **limits: Any) -> dict[str, Any]:
    return {
        "gateway": {"hostname": "gw.test", "data_dir": str(tmp_path / "data")},
        "listeners": [{"name": "plain", "port": 0, "tls": "none", "require_tls": False}],
        "chain": {"plugins": ["header_validation", "campaign_tag", "suppression", "dkim_sign"]},
        "plugins": {"dkim_sign": {"domains": {"shop.example": {"selector": "s1", "key_file": str(key)}}}},
        "spool": {**FAST_RETRIES, "workers": 0, "bounce_notices": False},
        "egress": smtp_egress(sink_port),
        "api": {"listen_port": 0},
        "tracking": {"listen_port": 0, "bounce_domain": "bounces.gw.test"},
        "limits": {"shutdown_grace": 2.0, **limits},
        "credentials": [
            {
                "name": "shop",
                "username": "shop",
                "secret": "pw-shop",
                "allowed_sender_domains": ["shop.example"],
                "messages_per_minute": 3,
            },
            {
                "name": "club",
                "username": "club",
                "secret": "pw-club",
                "allowed_sender_domains": ["club.example"],
            },
            {"name": "gone", "username": "gone", "secret": "pw-gone", "disabled": True},
            {"name": "quiet", "username": "quiet", "secret": "pw-quiet", "features": {"dkim": False}},
        ],
    }


class Api:
    """Requests to the API; every JSON answer validated against the served OpenAPI document."""

    def __init__(
        self, http: aiohttp.ClientSession, base: str, doc: dict[str, Any], tokens: dict[str, str]
    ) -> None:
        self.http, self.base, self.doc, self.tokens = http, base, doc, tokens

    async def send(self, who: str, body: Any = None, *, data: bytes | None = None) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        async with self.http.post(
            self.base + MSGS, json=body if data is None else None, data=data, headers=headers
        ) as r:
            assert r.content_type == "application/json", (r.status, await r.text())
            got = await r.json()
            status, answer_headers = r.status, r.headers
        responses = self.doc["paths"][MSGS]["post"]["responses"]
        assert str(status) in responses, f"POST {MSGS}: {status} is not in the OpenAPI document: {got}"
        schema = {
            **responses[str(status)]["content"]["application/json"]["schema"],
            "components": self.doc["components"],
        }
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(got)]
        assert errors == [], f"POST {MSGS} {status}: {errors}"
        return status, got, answer_headers


@asynccontextmanager
async def running(
    tmp_path: Path, sinks: Callable[..., Any], **limits: Any
) -> AsyncIterator[tuple[Gateway, Api, SinkHandler, Any]]:
    controller, sink = sinks()
    key, dns = make_key(tmp_path)
    gw = Gateway(parse_config(gateway_config(tmp_path, controller.port, key, **limits)))
    (tmp_path / "data").mkdir(exist_ok=True)
    store = ApiTokenStore(tmp_path / "data" / "credentials.db")
    tokens = {
        name: store.add(name, cred)
        for name, cred in (("admin", None), ("shop", "shop"), ("club", "club"), ("quiet", "quiet"))
    }
    store.close()
    api = gw.api_service(port=0)
    gw.services = [gw.ingress_service(), api, gw.delivery_service(workers=0)]
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(api.url + "/api/v1/openapi.json") as r:
                doc = await r.json()
            yield gw, Api(http, api.url, doc, tokens), sink, lambda name, timeout=5: dns.get(name)
    finally:
        await gw.stop(2.0)


def raw_message(sender: str, to: str, subject: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-Id: <{subject}@x>\r\n"
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHello over HTTP\r\n"
    ).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_raw_and_composed_sends_are_delivered_dkim_signed_with_the_attachment_byte_identical(
    tmp_path: Path, sinks: Callable[..., Any]
) -> None:
    attachment = bytes(range(256)) * 40 + b"\r\n.\r\n\x00end"  # every octet, a lone dot line, a NUL
    async with running(tmp_path, sinks) as (gw, api, sink, dns):
        status, got, _ = await api.send(
            "shop",
            {
                "mail_from": "news@shop.example",
                "rcpt_to": ["x@example.net"],
                "data": b64(raw_message("news@shop.example", "x@example.net", "raw1")),
            },
        )
        assert status == 202, got
        raw_qid = got["queue_id"]
        assert got["recipients"] == ["x@example.net"]
        status, got, _ = await api.send(
            "shop",
            {
                "from": "Shop News <news@shop.example>",
                "to": ["Ann <ann@example.net>"],
                "cc": ["cc@example.net"],
                "bcc": ["hidden@example.net"],
                "subject": "Spring sale \u2600",
                "text": "Plain text \u00e9",
                "html": "<html><body><p>Hi <b>Ann</b></p></body></html>",
                "attachments": [
                    {
                        "filename": "data.bin",
                        "content_type": "application/octet-stream",
                        "content": b64(attachment),
                    }
                ],
                "headers": {"X-Mailer-Ref": "order-17"},
                "campaign_id": "spring",
                "letter_id": "l1",
            },
        )
        assert status == 202, got
        composed_qid = got["queue_id"]
        assert sorted(got["recipients"]) == ["ann@example.net", "cc@example.net", "hidden@example.net"]
        await wait_for(lambda: len(sink.messages) == 4)

        by_rcpt = {m.rcpt_tos[0]: m for m in sink.messages}
        raw_copy = by_rcpt["x@example.net"]
        assert raw_copy.mail_from == "news@shop.example" and b"Hello over HTTP" in raw_copy.data
        received = email.message_from_bytes(raw_copy.data).get_all("Received")
        assert f"by gw.test (smtpgate) with HTTP id {raw_qid}" in " ".join(received[-1].split())
        for m in sink.messages:
            assert dkim.verify(m.data, dnsfunc=dns), m.rcpt_tos  # signed by the shop.example key
        parsed = email.message_from_bytes(by_rcpt["hidden@example.net"].data, policy=email.policy.default)
        assert parsed["Subject"] == "Spring sale \u2600" and "hidden@example.net" not in parsed.as_string()
        assert parsed["X-Mailer-Ref"] == "order-17" and parsed["Cc"] == "cc@example.net"
        [att] = list(parsed.iter_attachments())
        assert att.get_filename() == "data.bin"
        assert hashlib.sha256(att.get_content()).hexdigest() == hashlib.sha256(attachment).hexdigest()
        body = parsed.get_body(("plain",))
        assert body is not None and body.get_content().strip() == "Plain text \u00e9"

        # the message log knows both, as sent over HTTP by the shop credential
        await wait_for(lambda: len(gw.events.events(type="delivered")) == 4)
        story = gw.events.query(
            "SELECT credential, campaign_id FROM events WHERE queue_id = ? AND type = 'accepted'",
            (composed_qid,),
        )
        assert story == [("shop", "spring")] * 3
        async with api.http.get(
            f"{api.base}{MSGS}/{raw_qid}", headers={"Authorization": f"Bearer {api.tokens['shop']}"}
        ) as r:
            story = await r.json()
        assert (
            story["listener"] == "api" and story["credential"] == "shop" and story["client_ip"] == "127.0.0.1"
        )


async def test_refusals_keep_the_smtp_reply_a_5xx_is_422_a_rate_limit_429_with_retry_after(
    tmp_path: Path, sinks: Callable[..., Any]
) -> None:
    async with running(tmp_path, sinks) as (gw, api, sink, _):
        gw.events.suppress("blocked@example.net")
        status, got, _ = await api.send(
            "shop",
            {
                "from": "news@shop.example",
                "to": ["ok@example.net", "blocked@example.net"],
                "subject": "s",
                "text": "t",
            },
        )
        assert status == 422
        assert got["reply"] == {"code": 550, "enhanced": "5.0.0", "text": got["reply"]["text"]}
        assert "stoplist" in got["reply"]["text"] and got["recipient"] == "blocked@example.net"
        two_froms = (
            b"From: a@shop.example, b@shop.example\r\nTo: <x@example.net>\r\nSubject: two\r\n\r\nbody\r\n"
        )
        status, got, _ = await api.send(
            "shop", {"mail_from": "news@shop.example", "rcpt_to": ["x@example.net"], "data": b64(two_froms)}
        )
        assert status == 422 and got["reply"]["code"] == 550 and got["reply"]["enhanced"] == "5.6.0"
        assert "From" in got["reply"]["text"]
        status, got, _ = await api.send(
            "shop",
            {
                "from": "news@shop.example",
                "to": ["x@example.net"],
                "subject": "s",
                "text": "t",
                "features": {"trackopens": "maybe"},
            },
        )
        assert status == 400 and got["error"].startswith("features.trackopens")
        status, got, _ = await api.send(
            "shop", {"from": "news@shop.example", "to": ["b1@bounces.gw.test"], "subject": "s", "text": "t"}
        )
        assert status == 422 and got["recipient"] == "b1@bounces.gw.test" and got["reply"]["code"] == 550
        # messages_per_minute = 3 for the shop: the 4th send within the minute is a 429 with Retry-After
        statuses = []
        for i in range(4):
            status, got, headers = await api.send(
                "shop",
                {"from": "news@shop.example", "to": ["x@example.net"], "subject": f"n{i}", "text": "t"},
            )
            statuses.append(status)
        assert statuses == [202, 202, 202, 429]
        assert got["reply"]["code"] == 451 and int(headers["Retry-After"]) > 0
        assert gw.spool.show(got.get("queue_id", "none")) is None
        assert sink.messages == [] or all(m.rcpt_tos != ["blocked@example.net"] for m in sink.messages)


async def test_tenants_send_as_their_own_credential_and_never_with_another_sender_domain(
    tmp_path: Path, sinks: Callable[..., Any]
) -> None:
    async with running(tmp_path, sinks) as (gw, api, sink, _):
        club_mail = {"from": "info@club.example", "to": ["y@example.net"], "subject": "club", "text": "t"}
        status, got, _ = await api.send("shop", club_mail)
        assert status == 422 and got["reply"]["code"] == 553 and got["reply"]["enhanced"] == "5.7.1"
        status, got, _ = await api.send("club", club_mail)
        assert status == 202
        club_qid = got["queue_id"]
        status, got, _ = await api.send("club", {**club_mail, "credential": "shop"})
        assert status == 404  # a tenant cannot even learn whether another credential exists
        status, got, _ = await api.send("admin", club_mail)
        assert status == 400 and got["error"].startswith("credential")  # no open relay for administrators
        status, got, _ = await api.send("admin", {**club_mail, "credential": "shop"})
        assert status == 422 and got["reply"]["code"] == 553  # as the shop: its sender domains apply
        status, got, _ = await api.send("admin", {**club_mail, "credential": "nobody"})
        assert status == 404
        status, got, _ = await api.send("admin", {**club_mail, "credential": "gone"})
        assert status == 403
        status, got, _ = await api.send("admin", {**club_mail, "credential": "club"})
        assert status == 202
        await wait_for(lambda: len(gw.events.events(type="accepted")) == 2)
        creds = gw.events.query("SELECT DISTINCT credential FROM events WHERE type = 'accepted'")
        assert creds == [("club",)]
        # the credential's feature set applies: "quiet" has dkim off, so its shop.example mail is unsigned
        status, got, _ = await api.send(
            "quiet", {**club_mail, "from": "n@shop.example", "to": ["q@example.net"]}
        )
        assert status == 202
        status, got, _ = await api.send(
            "shop", {**club_mail, "from": "n@shop.example", "to": ["s@example.net"]}
        )
        assert status == 202
        await wait_for(lambda: {"q@example.net", "s@example.net"} <= {m.rcpt_tos[0] for m in sink.messages})
        signed = {m.rcpt_tos[0]: b"DKIM-Signature:" in m.data for m in sink.messages}
        assert (signed["q@example.net"], signed["s@example.net"]) == (False, True)
        async with api.http.get(
            f"{api.base}{MSGS}/{club_qid}", headers={"Authorization": f"Bearer {api.tokens['shop']}"}
        ) as r:
            assert r.status == 404


async def test_malformed_send_requests_are_400_naming_the_field_and_oversized_bodies_413(
    tmp_path: Path, sinks: Callable[..., Any]
) -> None:
    async with running(tmp_path, sinks, max_message_size=4096) as (gw, api, sink, _):
        good = {"from": "news@shop.example", "to": ["x@example.net"], "subject": "s", "text": "t"}
        for body, field in (
            ({**good, "to": ["not an address"]}, "to"),
            ({**good, "from": "nobody"}, "from"),
            ({**good, "subject": "a\r\nBcc: victim@example.net"}, "subject"),
            ({**good, "headers": {"Bcc": "x@example.net"}}, "headers"),
            ({**good, "headers": {"X-Ok": "a\nb"}}, "headers"),
            ({**good, "attachments": [{"filename": "a", "content": "@@@"}]}, "attachments.0.content"),
            ({**good, "campaign_id": "no spaces allowed"}, "campaign_id"),
            ({**good, "surprise": 1}, "surprise"),
            ({**good, "features": {"dkim": False}}, "features.dkim"),  # policy: never a message's choice
            ({"mail_from": "news@shop.example", "rcpt_to": [], "data": b64(b"x")}, "rcpt_to"),
            ({"mail_from": "news@shop.example", "rcpt_to": ["x@example.net"], "data": "%%%"}, "data"),
            ({k: v for k, v in good.items() if k != "to"}, "to"),
            ({k: v for k, v in good.items() if k != "text"}, "text"),
        ):
            status, got, _ = await api.send("shop", body)
            assert status == 400 and got["error"].startswith(field), (body, got)
        status, got, _ = await api.send("shop", data=b"{not json")
        assert status == 400
        status, got, _ = await api.send("shop", ["a list"])
        assert status == 400
        too_big = {**good, "text": "x" * 5000}  # a body under the request limit, a message over 4096 bytes
        status, got, _ = await api.send("shop", too_big)
        assert status == 422 and got["reply"]["code"] == 552
        huge = {**good, "text": "x" * (400 * 1024)}  # beyond the size limit in base64 plus the allowance
        status, got, _ = await api.send("shop", huge)
        assert status == 413 and "larger than" in got["error"]
        assert gw.events.events(type="accepted") == []


async def test_a_raw_message_with_unix_line_ends_is_sent_and_one_with_a_nul_is_refused(
    tmp_path: Path, sinks: Callable[..., Any]
) -> None:
    async with running(tmp_path, sinks) as (gw, api, sink, _):
        unix = raw_message("news@shop.example", "x@example.net", "unix").replace(b"\r\n", b"\n")
        status, got, _ = await api.send(
            "shop", {"mail_from": "news@shop.example", "rcpt_to": ["x@example.net"], "data": b64(unix)}
        )
        assert status == 202, got
        await wait_for(lambda: len(sink.messages) == 1)
        assert (
            b"Subject: unix\r\n" in sink.messages[0].data and b"Hello over HTTP\r\n" in sink.messages[0].data
        )
        nul = raw_message("news@shop.example", "x@example.net", "nul").replace(b"Hello", b"Hel\x00lo")
        status, got, _ = await api.send(
            "shop", {"mail_from": "news@shop.example", "rcpt_to": ["x@example.net"], "data": b64(nul)}
        )
        assert status == 422 and got["reply"]["enhanced"] == "5.6.0" and "NUL" in got["reply"]["text"]


@pytest.mark.usefixtures("inline_on_any_disk")
async def test_http_sends_keep_the_writer_thread_s_group_commit_with_no_smtp_session_open(
    tmp_path: Path, sinks: Callable[..., Any]
) -> None:
    """Only the SMTP ingress with one session open commits on the event loop's thread (issue 17);
    HTTP sends arrive in parallel, so theirs go to the writer thread even while no session is open."""
    async with running(tmp_path, sinks) as (gw, api, sink, _):
        assert isinstance(gw.spool, SqliteSpool)
        replies = await asyncio.gather(*(
            api.send("club", {"mail_from": "news@club.example", "rcpt_to": [f"r{i}@example.net"],
                              "data": b64(raw_message("news@club.example", f"r{i}@example.net", f"g{i}"))})
            for i in range(3)
        ))
        assert [status for status, _, _ in replies] == [202] * 3
        assert gw.spool.inline_commits == 0
        await wait_for(lambda: len(sink.messages) == 3)
