"""AUTH, TLS and per-credential limits, with real clients (smtplib, aiosmtplib) over real sockets."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import ssl

import aiosmtplib
import pytest

from pipeline.accounts.store import CredentialStore
from pipeline.app.harness import Dialogue, client_tls, ingress_test_config, running_ingress, spooled

MESSAGE = b"From: app@shop.example\r\nTo: user@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
USER = {"name": "app", "kind": "password", "username": "app-user", "secret": "s3cret-pass"}
KEY = {"name": "key", "kind": "apikey", "secret": "key-0123456789"}


def cfg(data_dir, tls_cert, credentials=(USER, KEY), **sections):
    return ingress_test_config(data_dir, tls_cert, credentials=list(credentials), **sections)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def greet(port: int, *, tls: ssl.SSLContext | None = None, ehlo: bool = True) -> Dialogue:
    d = await Dialogue.connect("127.0.0.1", port, tls=tls)
    assert (await d.reply()).code == 220
    if ehlo:
        assert (await d.cmd("EHLO client.test")).code == 250
    return d


async def test_smtplib_starttls_auth_login_and_send(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        port = ingress.port("starttls")

        def send() -> tuple[dict, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.test")
                assert "auth" not in s.esmtp_features  # only offered under TLS
                s.starttls(context=client_tls(tls_cert))
                s.ehlo("client.test")
                assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
                s.user, s.password = "app-user", "s3cret-pass"
                code = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
                refused = s.sendmail("app@shop.example", ["user@example.com"], MESSAGE)
                return refused, code

        refused, code = await asyncio.to_thread(send)
    assert refused == {}
    assert code[0] == 235
    [msg] = spooled(data_dir)
    assert msg["context"]["credential"]["name"] == "app"


async def test_smtplib_auth_login_with_initial_response(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        port = ingress.port("starttls")

        def login() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.starttls(context=client_tls(tls_cert))
                s.ehlo("client.test")
                s.user, s.password = "apikey", "key-0123456789"
                return s.auth("LOGIN", s.auth_login, initial_response_ok=True)

        code, _ = await asyncio.to_thread(login)
    assert code == 235


async def test_aiosmtplib_starttls_auth_plain_and_send(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("starttls"), start_tls=True,
                                 tls_context=client_tls(tls_cert), timeout=10)
        await client.connect()
        await client.ehlo()  # RFC 3207: EHLO again after STARTTLS
        resp = await client.auth_plain("app-user", "s3cret-pass")
        assert (resp.code, resp.message) == (235, "2.7.0 Authentication successful")
        errors, reply = await client.sendmail("app@shop.example", ["user@example.com"], MESSAGE)
        await client.quit()
    assert errors == {}
    assert reply.startswith("2.0.0 Ok: queued as ")
    assert spooled(data_dir)[0]["queue_id"] == reply.rsplit(" ", 1)[1]


async def test_aiosmtplib_implicit_tls_auth_login(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("smtps"), use_tls=True,
                                 tls_context=client_tls(tls_cert), timeout=10)
        await client.connect()
        await client.ehlo()
        assert "auth" in client.esmtp_extensions and "starttls" not in client.esmtp_extensions
        resp = await client.auth_login("apikey", "key-0123456789")
        assert resp.code == 235
        errors, _ = await client.sendmail("app@shop.example", ["user@example.com"], MESSAGE)
        await client.quit()
    assert errors == {}
    assert len(spooled(data_dir)) == 1


async def test_auth_plain_without_initial_response_gets_empty_challenge(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert))
        r = await d.cmd("AUTH PLAIN")
        assert (r.code, r.lines) == (334, [""])
        r = await d.cmd(base64.b64encode(b"\0app-user\0s3cret-pass").decode())
        assert (r.code, r.enhanced) == (235, "2.7.0")
        r = await d.cmd("AUTH PLAIN " + base64.b64encode(b"\0app-user\0s3cret-pass").decode())
        assert (r.code, r.enhanced) == (503, "5.5.1")
        await d.close()


async def test_auth_errors_have_precise_replies(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("starttls"))
        r = await d.cmd("AUTH LOGIN")
        assert (r.code, r.enhanced) == (538, "5.7.11")  # TLS required before AUTH
        r = await d.cmd("MAIL FROM:<app@shop.example>")  # nothing could be accepted without AUTH: refused at MAIL
        assert (r.code, r.text) == (530, "5.7.0 Must issue a STARTTLS command first (this server does not accept unsecured connections)")
        await d.close()

        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert))
        assert (await d.cmd("AUTH CRAM-MD5")).text == "5.5.4 Unrecognized authentication type"
        assert (await d.cmd("AUTH")).code == 501
        assert (await d.cmd("STARTTLS")).text == "5.5.1 TLS already active"
        r = await d.cmd("AUTH LOGIN")
        assert r.text == "VXNlcm5hbWU6"
        assert (await d.cmd("*")).text == "5.7.0 Authentication aborted"
        assert (await d.cmd("AUTH PLAIN !!!notbase64")).text == "5.5.2 Cannot decode base64"
        r = await d.cmd("AUTH PLAIN " + b64("app-user\0wrong"))  # two fields, not three
        assert (r.code, r.enhanced) == (501, "5.5.2")
        r = await d.cmd("AUTH PLAIN " + b64("\0app-user\0wrong"))
        assert (r.code, r.text) == (535, "5.7.8 Authentication credentials invalid (wrong api key)")
        r = await d.cmd("MAIL FROM:<app@shop.example>")
        assert (r.code, r.text) == (530, "5.7.0 Authentication required (no username or password)")
        await d.close()

        d = await greet(ingress.port("plain"))
        assert (await d.cmd("STARTTLS")).text == "4.7.0 TLS not available"
        await d.close()

        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert), ehlo=False)
        assert (await d.cmd("HELO client.test")).code == 250
        assert (await d.cmd("AUTH LOGIN")).text == "5.5.1 Error: AUTH requires EHLO"
        await d.close()


async def test_disabled_credential_gets_its_own_535(data_dir, tls_cert):
    store = CredentialStore(data_dir / "credentials.db")
    key = store.add("old-app", "apikey")
    store.set_disabled("old-app")
    store.close()
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert))
        r = await d.cmd("AUTH PLAIN " + base64.b64encode(f"\0apikey\0{key}".encode()).decode())
        assert (r.code, r.text) == (535, "5.7.8 Authentication credentials disabled: contact the administrator (client is deleted)")
        await d.close()
        # re-enabled while the server runs: the next AUTH sees it (no restart)
        store = CredentialStore(data_dir / "credentials.db")
        store.set_disabled("old-app", False)
        store.close()
        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert))
        r = await d.cmd("AUTH PLAIN " + base64.b64encode(f"\0\0{key}".encode()).decode())
        assert r.code == 235
        await d.close()


async def test_repeated_bad_passwords_are_throttled_per_ip(data_dir, tls_cert, caplog):
    config = cfg(data_dir, tls_cert, limits={"auth_failures_per_minute": 3})
    async with running_ingress(config) as (_, ingress):
        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert))
        for _ in range(2):
            r = await d.cmd("AUTH PLAIN " + b64("\0app-user\0guess-123"))
            assert r.code == 535
        r = await d.cmd("AUTH PLAIN " + b64("\0app-user\0guess-123"))
        assert (r.code, r.text) == (421, "4.7.0 Too many failed authentication attempts, try again later")
        assert await d.closed()
        # a new connection from the same address is refused at AUTH, even with the right password
        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert))
        r = await d.cmd("AUTH PLAIN " + b64("\0app-user\0s3cret-pass"))
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert await d.closed()
    assert "guess-123" not in caplog.text  # failures are logged without the secret
    assert "AUTH PLAIN failed: login='app-user' reason=invalid" in caplog.text


async def test_api_key_works_with_any_login(data_dir, tls_cert):
    store = CredentialStore(data_dir / "credentials.db")
    key = store.add("generated", "apikey")
    store.close()
    assert key is not None and key.startswith("sg_")
    async with running_ingress(cfg(data_dir, tls_cert, credentials=[KEY])) as (_, ingress):
        for login in ("apikey", "", "whatever"):
            for secret, name in ((key, "generated"), ("key-0123456789", "key")):
                d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert))
                r = await d.cmd("AUTH PLAIN " + base64.b64encode(f"\0{login}\0{secret}".encode()).decode())
                assert r.code == 235, (login, name)
                await d.close()


async def test_sender_domain_recipients_rate_and_size_limits_per_credential(data_dir, tls_cert):
    limited = {**USER, "allowed_sender_domains": ["shop.example", ".mail.shop.example"], "max_recipients": 2,
               "messages_per_minute": 1, "max_message_size": 500}
    async with running_ingress(cfg(data_dir, tls_cert, credentials=[limited])) as (_, ingress):
        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert))
        assert (await d.cmd("AUTH PLAIN " + b64("\0app-user\0s3cret-pass"))).code == 235
        r = await d.cmd("MAIL FROM:<app@evil.example>")
        assert (r.code, r.text) == (553, "5.7.1 Sender address rejected: not owned by user")
        r = await d.cmd("MAIL FROM:<app@shop.example> SIZE=501")
        assert (r.code, r.enhanced) == (552, "5.3.4")
        assert (await d.cmd("MAIL FROM:<news@eu.mail.shop.example> SIZE=400")).code == 250
        assert (await d.cmd("RCPT TO:<a@example.com>")).code == 250
        assert (await d.cmd("RCPT TO:<b@example.com>")).code == 250
        r = await d.cmd("RCPT TO:<c@example.com>")
        assert (r.code, r.text) == (452, "4.5.3 Too many recipients")
        assert (await d.cmd("DATA")).code == 354
        r = await d.cmd(b"Subject: big\r\n\r\n" + b"x" * 600 + b"\r\n.\r\n")
        assert (r.code, r.enhanced) == (552, "5.3.4")
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
        assert (await d.cmd("RCPT TO:<a@example.com>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        assert (await d.cmd(b"Subject: small\r\n\r\nhi\r\n.\r\n")).code == 250
        r = await d.cmd("MAIL FROM:<app@shop.example>")
        assert (r.code, r.text) == (451, "4.7.1 Message rate limit exceeded, try again later")
        await d.close()
    assert len(spooled(data_dir)) == 1


@pytest.mark.parametrize("listener", ["plain", "starttls"])
async def test_auth_is_advertised_only_where_allowed(data_dir, tls_cert, listener):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port(listener), ehlo=False)
        r = await d.cmd("EHLO client.test")
        assert ("AUTH PLAIN LOGIN" in r.lines) is (listener == "plain")  # plain: require_tls = false
        assert ("STARTTLS" in r.lines) is (listener == "starttls")
        await d.close()


async def test_commands_pipelined_behind_starttls_are_discarded(data_dir, tls_cert):
    """RFC 3207 section 5 (the STARTTLS command injection bugs): plaintext sent after STARTTLS is dropped."""
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("starttls"))
        await d.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        assert (await d.reply()).code == 220
        await d.writer.start_tls(client_tls(tls_cert), server_hostname="localhost")
        r = await d.cmd("NOOP")
        assert (r.code, r.text) == (250, "2.0.0 OK")  # the injected MAIL got no reply and did nothing
        assert (await d.cmd("EHLO client.test")).code == 250
        assert (await d.cmd("AUTH PLAIN " + b64("\0app-user\0s3cret-pass"))).code == 235
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250  # not "nested MAIL"
        await d.close()
