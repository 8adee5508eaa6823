"""What real SMTP clients (smtplib, aiosmtplib) see: the exact relay, size, long-line and throttle
replies; every phase hook sees the session and its verdict is the reply; a credential's locked
switch wins over the control header; sandbox and sink addresses show in the log."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import smtplib
from pathlib import Path
from typing import Any, ClassVar

import aiosmtplib
import pytest

from pipeline import Plugin, Reject, Session, Transaction, hookimpl
from pipeline.accounts.secrets import hash_secret_pbkdf2
from pipeline.app.harness import Dialogue, client_tls, ingress_test_config, running_ingress, spooled
from pipeline.contract.context import Credential

# a cheap hash keeps these tests fast; the scrypt path is tested in test_ingress_auth
KEY = {"name": "key", "kind": "apikey", "secret_hash": hash_secret_pbkdf2("key-0123456789", 1000)}
BLOCKED = {"name": "blocked", "kind": "password", "username": "blocked-user",
           "secret_hash": hash_secret_pbkdf2("blocked-pass", 1000)}
MESSAGE = b"From: app@shop.example\r\nTo: user@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


def cfg(data_dir: Path, tls_cert: tuple[Path, Path], **sections: Any) -> Any:
    sections.setdefault("credentials", [KEY])
    return ingress_test_config(data_dir, tls_cert, **sections)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- issue 4: error replies through smtplib and aiosmtplib ------------------------------------


async def test_smtplib_sees_relay_refusal_and_size_refusal_with_their_exact_replies(data_dir, tls_cert):
    config = cfg(data_dir, tls_cert, relay={"local_domains": ["gw.test"]}, limits={"max_message_size": 2000})
    async with running_ingress(config) as (_, ingress):
        port = ingress.port("plain")

        def relay() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                try:
                    s.sendmail("spammer@evil.example", ["user%evil.example@gw.test", "bob@evil.example"], MESSAGE)
                except smtplib.SMTPRecipientsRefused as e:
                    return e.recipients
                raise AssertionError("relay accepted")

        def oversize() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.test")
                s.login("apikey", "key-0123456789")
                try:  # smtplib sends SIZE= because the server advertises SIZE 2000
                    s.sendmail("app@shop.example", ["user@example.com"], MESSAGE + b"x" * 3000 + b"\r\n")
                except smtplib.SMTPSenderRefused as e:
                    return e.smtp_code, e.smtp_error
                raise AssertionError("oversized message accepted")

        refused = await asyncio.to_thread(relay)
        size = await asyncio.to_thread(oversize)
    assert refused == {
        "user%evil.example@gw.test": (554, b"5.7.1 Relay access denied"),
        "bob@evil.example": (530, b"5.7.0 Authentication required (no username or password)"),
    }
    assert size == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert spooled(data_dir) == []


async def test_aiosmtplib_sees_long_line_refusal_then_throttling_after_bad_passwords(data_dir, tls_cert):
    config = cfg(data_dir, tls_cert, limits={"auth_failures_per_minute": 3})
    async with running_ingress(config) as (_, ingress):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("smtps"), use_tls=True,
                                 tls_context=client_tls(tls_cert), timeout=10)
        await client.connect()
        await client.ehlo()
        await client.auth_plain("apikey", "key-0123456789")
        with pytest.raises(aiosmtplib.SMTPDataError) as long_line:
            await client.sendmail("app@shop.example", ["user@example.com"], MESSAGE + b"y" * 1200 + b"\r\n")
        assert (long_line.value.code, long_line.value.message) == (
            500, "5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets including CRLF)")
        await client.quit()

        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("smtps"), use_tls=True,
                                 tls_context=client_tls(tls_cert), timeout=10)
        await client.connect()
        await client.ehlo()
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as bad:
                await client.auth_plain("apikey", "guess-123")
            assert (bad.value.code, bad.value.message) == (535, "5.7.8 Authentication credentials invalid (wrong api key)")
        with pytest.raises(aiosmtplib.SMTPResponseException) as throttled:
            await client.auth_plain("apikey", "guess-123")
        assert (throttled.value.code, throttled.value.message) == (
            421, "4.7.0 Too many failed authentication attempts, try again later")
        client.close()
    assert spooled(data_dir) == []


# -- issue 4 point 8: every phase's hook sees the session and its verdict is the reply ---------


class PhaseGate(Plugin):
    """Refuses a HELO name and a credential; records what MAIL FROM sees of the session."""

    name = "phase_gate"
    seen: ClassVar[list[tuple[str, bool, str, str | None, str | None]]] = []

    @hookimpl
    def on_helo(self, session: Session, hostname: str) -> Reject | None:
        if hostname == "refused.example":
            return Reject(550, "5.7.1", "HELO name refused by policy")
        return None

    @hookimpl
    def on_auth(self, session: Session, credential: Credential) -> Reject | None:
        if credential.name == "blocked":
            return Reject(535, "5.7.8", "Credential suspended by policy")
        return None

    @hookimpl
    def on_mail_from(self, session: Session, transaction: Transaction, address: str) -> None:
        cred = session.credential.name if session.credential else None
        PhaseGate.seen.append((session.peer_ip, session.tls, session.listener, session.helo, cred))


async def test_helo_and_auth_verdicts_are_the_replies_and_hooks_see_peer_tls_and_credential(data_dir, tls_cert):
    PhaseGate.seen = []
    async with running_ingress(cfg(data_dir, tls_cert, credentials=[KEY, BLOCKED]), [PhaseGate]) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("smtps"), tls=client_tls(tls_cert))
        assert (await d.reply()).code == 220
        r = await d.cmd("EHLO refused.example")
        assert (r.code, r.text) == (550, "5.7.1 HELO name refused by policy")
        assert (await d.cmd("EHLO fine.example")).code == 250
        r = await d.cmd("AUTH PLAIN " + b64("\0blocked-user\0blocked-pass"))
        assert (r.code, r.text) == (535, "5.7.8 Credential suspended by policy")
        r = await d.cmd("MAIL FROM:<a@shop.example>")  # the refused credential did not authenticate
        assert (r.code, r.text) == (530, "5.7.0 Authentication required (no username or password)")
        assert (await d.cmd("AUTH PLAIN " + b64("\0apikey\0key-0123456789"))).code == 235
        assert (await d.cmd("MAIL FROM:<a@shop.example>")).code == 250
        await d.close()
    assert PhaseGate.seen == [  # the unauthenticated MAIL was refused before on_mail_from
        ("127.0.0.1", True, "smtps", "fine.example", "key"),
    ]


# -- issue 4 point 4: a credential's locked switch wins over the X-SMTPeter header ------------


async def test_locked_credential_feature_ignores_the_control_header_over_smtp(data_dir, tls_cert):
    locked = {**KEY, "features": {"trackopens": False}, "locked": ["trackopens"]}
    config = cfg(data_dir, tls_cert, credentials=[locked], chain=["open_pixel"])  # the switch's plugin
    async with running_ingress(config) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        assert (await d.reply()).code == 220
        assert (await d.cmd("EHLO client.test")).code == 250
        assert (await d.cmd("AUTH PLAIN " + b64("\0apikey\0key-0123456789"))).code == 235
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
        assert (await d.cmd("RCPT TO:<user@example.com>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        r = await d.cmd(b"From: app@shop.example\r\nX-SMTPeter-TrackOpens: true\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
        assert r.text.startswith("2.0.0 Ok: queued as ")
        await d.close()
    [msg] = spooled(data_dir)
    assert msg["context"]["features"]["trackopens"] is False
    assert b"x-smtpeter" not in msg["data"].lower()


# -- issue 4 point 7: sandbox and sink addresses both show in the log -------------------------


async def test_sandbox_and_sink_address_show_in_the_log(data_dir, tls_cert, caplog):
    caplog.set_level(logging.INFO, "smtpgate.ingress")
    demo = {"name": "demo", "kind": "password", "username": "demo.demo@smtpgate",
            "secret_hash": hash_secret_pbkdf2("demo", 1000), "sandbox": True}
    config = cfg(data_dir, tls_cert, credentials=[demo], relay={"sink_addresses": ["test@test.ru"]})
    async with running_ingress(config) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        assert (await d.reply()).code == 220
        assert (await d.cmd("EHLO client.test")).code == 250
        assert (await d.cmd("AUTH PLAIN " + b64("\0demo.demo@smtpgate\0demo"))).code == 235
        ids = []
        for rcpt in ("client@example.com", "test@test.ru"):
            assert (await d.cmd("MAIL FROM:<shop@example.ru>")).code == 250
            assert (await d.cmd(f"RCPT TO:<{rcpt}>")).code == 250
            assert (await d.cmd("DATA")).code == 354
            r = await d.cmd(b"From: shop@example.ru\r\nSubject: hi\r\n\r\nhi\r\n.\r\n")
            assert r.code == 250
            ids.append(r.text.rsplit(" ", 1)[1] if "queued as" in r.text else None)
        await d.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"queue_id={ids[0]} ") and "accepted from=<shop@example.ru>" in m
               and m.endswith("credential=demo sandbox") for m in messages), messages
    assert ids[1] is None
    assert any(re.fullmatch(r"queue_id=\S+ session=\S+ sink address test@test\.ru: accepted and dropped", m)
               for m in messages), messages
