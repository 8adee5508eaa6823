"""The ``Received:`` trace header (RFC 5321 4.4) the ingress adds to each accepted message, in
Postfix's form; checked in the spool, in the maildir copy and on the smarthost path."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
import ssl
from collections.abc import Callable
from typing import Any

import aiosmtplib

from pipeline.accounts.secrets import hash_secret_pbkdf2
from pipeline.app.gateway import Gateway
from pipeline.app.harness import Dialogue, client_tls, ingress_test_config, running_ingress, spooled
from tests.support.smtp_sink import smtp_egress

KEY = {"name": "shop-key", "kind": "apikey", "secret_hash": hash_secret_pbkdf2("key-0123456789", 1000)}
AUTH = "AUTH PLAIN " + base64.b64encode(b"\0apikey\0key-0123456789").decode()
BODY = b"From: app@shop.example\r\nTo: user@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
POSTFIX_FORM = re.compile(
    rb"Received: from client\.test \(unknown \[127\.0\.0\.1\]\)\r\n"
    rb"\t\(using (TLSv1\.[23]) with cipher ([A-Z0-9_-]+) \((\d+)/\3 bits\)\)\r\n"
    rb"\tby gw\.test \(smtpgate\) with ESMTPSA id (\S+)\r\n"
    rb"\tfor <user@example\.com>; ([^\r\n]+)\r\n"
)


def received(data: bytes) -> bytes:
    """The first ``Received:`` header field (with its continuation lines)."""
    m = re.search(rb"(?:^|\n)(Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)", data.split(b"\r\n\r\n")[0] + b"\r\n")
    assert m is not None, data[:300]
    return m.group(1)


async def send(port: int, body: bytes = BODY, *, tls: ssl.SSLContext | None = None, auth: bool = True,
               helo: str = "EHLO client.test", rcpts: tuple[str, ...] = ("user@example.com",),
               implicit: ssl.SSLContext | None = None) -> str:
    d = await Dialogue.connect("127.0.0.1", port, tls=implicit)
    assert (await d.reply()).code == 220
    assert (await d.cmd(helo)).code == 250
    if tls is not None:
        assert (await d.starttls(tls)).code == 220
        assert (await d.cmd(helo)).code == 250
    if auth:
        assert (await d.cmd(AUTH)).code == 235
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    for rcpt in rcpts:
        assert (await d.cmd(f"RCPT TO:<{rcpt}>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    r = await d.cmd(body + b".\r\n")
    assert r.code == 250, r
    await d.close()
    return r.text.rsplit(" ", 1)[1]


async def test_received_header_in_postfix_form_with_tls_cipher_and_no_credential(data_dir, tls_cert):
    async with running_ingress(ingress_test_config(data_dir, tls_cert, credentials=[KEY])) as (_, ingress):
        queue_id = await send(ingress.port("starttls"), tls=client_tls(tls_cert))
    [msg] = spooled(data_dir)
    header = received(msg["data"])
    m = POSTFIX_FORM.fullmatch(header)
    assert m is not None, header
    assert m.group(4).decode() == queue_id == msg["queue_id"]
    assert abs(email.utils.parsedate_to_datetime(m.group(5).decode()).timestamp() - msg["context"]["received_at"]) < 60
    assert b"shop-key" not in header and b"apikey" not in header  # privacy: the account is not named
    assert msg["data"][len(header):] == BODY


async def test_protocol_and_for_clause_follow_the_session(data_dir, tls_cert):
    office = {"name": "office", "kind": "ip", "networks": ["127.0.0.0/8"]}
    config = ingress_test_config(data_dir, tls_cert, credentials=[office])
    async with running_ingress(config) as (_, ingress):
        await send(ingress.port("plain"), auth=False, helo="HELO client.test", rcpts=("a@example.com", "b@example.com"))
        await send(ingress.port("smtps"), auth=False, implicit=client_tls(tls_cert))
    plain, implicit = (received(m["data"]) for m in spooled(data_dir))
    assert re.fullmatch(rb"Received: from client\.test \(unknown \[127\.0\.0\.1\]\)\r\n"
                        rb"\tby gw\.test \(smtpgate\) with SMTP id \S+; [^\r\n]+\r\n", plain), plain
    assert b"for <" not in plain  # two recipients: named in neither (Postfix does the same)
    assert b"with ESMTPS id" in implicit and b"(using TLSv1." in implicit
    assert b"\tfor <user@example.com>; " in implicit


async def test_credential_is_named_only_when_configured_and_the_header_can_be_off(data_dir, tls_cert):
    shown = ingress_test_config(data_dir, tls_cert, credentials=[KEY], gateway={"trace_credential": True})
    async with running_ingress(shown) as (_, ingress):
        await send(ingress.port("plain"))
    assert b"\t(Authenticated sender: shop-key)\r\n" in received(spooled(data_dir)[0]["data"])

    off = ingress_test_config(data_dir / "off", tls_cert, credentials=[KEY], gateway={"trace_header": False})
    async with running_ingress(off) as (_, ingress):
        await send(ingress.port("plain"))
    assert spooled(data_dir / "off")[0]["data"] == BODY


async def _through_the_gateway(data_dir: Any, egress: dict[str, Any], delivered: Callable[[], bool]) -> None:
    config = ingress_test_config(
        data_dir, None, credentials=[KEY], egress=egress, tracking={"listen_port": 0}, api={"listen_port": 0},
        spool={"workers": 0, "retry_min": 0.05, "poll_interval": 0.05},
    )
    gw = Gateway(config)
    gw.build_services(workers=0)
    await gw.start()
    try:
        port = next(s for s in gw.services if s.name == "ingress").port("plain")  # type: ignore[attr-defined]
        await aiosmtplib.send(BODY, sender="app@shop.example", recipients=["user@example.com"], hostname="127.0.0.1",
                              port=port, username="apikey", password="key-0123456789", start_tls=False)
        async with asyncio.timeout(15):
            while not delivered():
                await asyncio.sleep(0.02)
    finally:
        await gw.stop(5.0)


async def test_received_header_reaches_the_maildir_copy(data_dir):
    maildir = data_dir / "maildir" / "new"
    await _through_the_gateway(data_dir, {"type": "maildir"}, lambda: maildir.exists() and any(maildir.iterdir()))
    [path] = list(maildir.iterdir())
    header = received(path.read_bytes())
    assert re.match(rb"Received: from \S+ \(unknown \[127\.0\.0\.1\]\)\r\n", header), header
    assert b"\tby gw.test (smtpgate) with ESMTPA id " in header


async def test_received_header_reaches_the_smarthost(data_dir, sinks):
    controller, sink = sinks()
    await _through_the_gateway(data_dir, smtp_egress(controller.port), lambda: bool(sink.messages))
    [copy] = sink.messages
    assert b"\tby gw.test (smtpgate) with ESMTPA id " in received(copy.data)


async def test_reverse_dns_names_the_client_when_switched_on(data_dir, tls_cert):
    """127.0.0.1's name comes from /etc/hosts (nsswitch ``files`` first): no DNS query leaves the host."""
    config = ingress_test_config(data_dir, tls_cert, credentials=[KEY], gateway={"reverse_dns": True})
    async with running_ingress(config) as (_, ingress):
        await send(ingress.port("plain"))
    header = received(spooled(data_dir)[0]["data"])
    assert re.match(rb"Received: from client\.test \((?!unknown)[^ ()]+ \[127\.0\.0\.1\]\)\r\n", header), header
