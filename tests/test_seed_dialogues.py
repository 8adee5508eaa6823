"""Every seed's SMTP dialogue, replayed line by line over real sockets against the ingress.

The seeds' example messages are abbreviated (Perfit's has only a Subject, SMTPeter's no
Content-Type, enKod's no empty line before the HTML): these tests run the real header_validation
plugin on its embedded defaults, which accept them as Postfix's cleanup would; one test shows
the strict mode's reply to the same message.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import ClassVar

import pytest

from pipeline import Event, Plugin, hookimpl
from pipeline.app.harness import Dialogue, client_tls, ingress_test_config, running_ingress, spooled

PERFIT_KEY = "pf_live_4f9a0c7e2b1d"
# enKod's example: AUTH PLAIN with an empty authzid and login, the SMTP key as password. The
# seed's literal string is not valid base64 (61 data characters: a redacted key), so the server
# answers it 501 5.5.2; the same key, correctly encoded, authenticates.
ENKOD_SEED_AUTH = "AABfN3lhTUZtcm5hZ251VFRXR1lueVNiQWNLX2R4VTh4WWVYdzV2UzBYXVpMQ=="
ENKOD_KEY = "_7yaMFmrnagnuTTWGYnySbAcK_dxU8xYeXw5vS0X]ZL"
ENKOD_AUTH = base64.b64encode(b"\0\0" + ENKOD_KEY.encode()).decode()

# enKod's example message exactly as its documentation shows it (../shared/seeds/enkod-smtp-gate.md):
# no empty line between the header and the HTML, an unterminated conditional comment, two <html>.
ENKOD_MESSAGE = (Path(__file__).resolve().parent.parent / "samples" / "24-enkod-literal.eml").read_bytes()

CREDENTIALS = [
    {"name": "perfit", "kind": "apikey", "secret": PERFIT_KEY},
    {"name": "enkod", "kind": "apikey", "secret": ENKOD_KEY},
    {"name": "smtpeter", "kind": "password", "username": "my-username", "secret": "my-password",
     "features": {"trackopens": True}},
    {"name": "sendsay-demo", "kind": "password", "username": "demo.demo@smtpgate", "secret": "demo", "sandbox": True},
    {"name": "sendsay-office", "kind": "ip", "networks": ["127.0.0.1/32"]},
]


class EventRecorder(Plugin):
    """Collects every event the gateway emits."""

    name = "event_recorder"
    events: ClassVar[list[Event]] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        EventRecorder.events.append(event)


@pytest.fixture
def recorder():
    EventRecorder.events = []
    return EventRecorder


def seed_config(data_dir, tls_cert, credentials=CREDENTIALS, **sections):
    return ingress_test_config(
        data_dir, tls_cert, chain=["header_validation", "open_pixel"], credentials=credentials,
        **sections,
    )


async def expect(d: Dialogue, line: str | None, code: int, enhanced: str | None = None, text: str | None = None):
    r = await (d.cmd(line) if line is not None else d.reply())
    assert r.code == code, f"{line!r} -> {r}"
    if enhanced is not None:
        assert r.enhanced == enhanced, f"{line!r} -> {r}"
    if text is not None:
        assert r.text == text, f"{line!r} -> {r}"
    return r


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_perfit_telnet_session_with_apikey_login(data_dir, tls_cert, recorder):
    cfg = seed_config(data_dir, tls_cert)
    async with running_ingress(cfg, [recorder]) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        await expect(d, None, 220, text="gw.test ESMTP smtpgate")
        ehlo = await expect(d, "EHLO minombre", 250)
        assert ehlo.lines[0] == "gw.test"
        assert {"8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN"} <= set(ehlo.lines)
        assert f"SIZE {cfg.limits.max_message_size}" in ehlo.lines
        await expect(d, "AUTH LOGIN", 334, text="VXNlcm5hbWU6")
        await expect(d, "YXBpa2V5", 334, text="UGFzc3dvcmQ6")  # "apikey"
        await expect(d, b64(PERFIT_KEY), 235, "2.7.0")
        await expect(d, "MAIL FROM: yo@midominio.com", 250, "2.1.0")
        await expect(d, "RCPT TO: destinatario@domain.com", 250, "2.1.5")
        await expect(d, "DATA", 354)
        r = await expect(d, "Subject: este es el asunto\r\n\r\nEste es el contenido\r\n.", 250, "2.0.0")
        assert r.text.startswith("2.0.0 Ok: queued as ")
        queue_id = r.text.rsplit(" ", 1)[1]
        await expect(d, "QUIT", 221, "2.0.0")
        await d.close()
    [msg] = spooled(data_dir)
    assert msg["queue_id"] == queue_id
    assert msg["mail_from"] == "yo@midominio.com"
    assert msg["recipients"] == ["destinatario@domain.com"]
    assert msg["context"]["credential"]["name"] == "perfit"
    assert b"Subject: este es el asunto\r\n" in msg["data"]
    assert b"\r\nFrom: " in msg["data"] or msg["data"].startswith(b"From: ")
    accepted = [e for e in recorder.events if e.type == "accepted"]
    assert [(e.queue_id, e.recipient, e.credential) for e in accepted] == [(queue_id, "destinatario@domain.com", "perfit")]


async def test_perfit_message_gets_the_header_reply_in_strict_mode(data_dir, tls_cert):
    cfg = ingress_test_config(data_dir, tls_cert, chain=["header_validation", "open_pixel"], credentials=CREDENTIALS,
                              plugins={"header_validation": {"strict": True}})
    async with running_ingress(cfg) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        await expect(d, None, 220)
        await expect(d, "EHLO minombre", 250)
        await expect(d, "AUTH LOGIN", 334)
        await expect(d, "YXBpa2V5", 334)
        await expect(d, b64(PERFIT_KEY), 235)
        await expect(d, "MAIL FROM: yo@midominio.com", 250)
        await expect(d, "RCPT TO: destinatario@domain.com", 250)
        await expect(d, "DATA", 354)
        await expect(d, "Subject: este es el asunto\r\n\r\nEste es el contenido\r\n.", 550, "5.6.0",
                     "5.6.0 Message has no From: header")
        await d.close()
    assert spooled(data_dir) == []


async def test_smtpeter_implicit_tls_auth_login_with_initial_response(data_dir, tls_cert, recorder):
    cfg = seed_config(data_dir, tls_cert)
    async with running_ingress(cfg, [recorder]) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("smtps"), tls=client_tls(tls_cert))
        await expect(d, None, 220, text="gw.test ESMTP smtpgate")
        ehlo = await expect(d, "EHLO mydomain.com", 250)
        assert "PIPELINING" in ehlo.lines and "8BITMIME" in ehlo.lines
        assert "AUTH PLAIN LOGIN" in ehlo.lines  # aiosmtpd #281: AUTH missing on implicit TLS
        assert "STARTTLS" not in ehlo.lines
        await expect(d, "AUTH LOGIN bXktdXNlcm5hbWU=", 334, text="UGFzc3dvcmQ6")
        await expect(d, "bXktcGFzc3dvcmQ=", 235, "2.7.0")
        await expect(d, "MAIL FROM:<info@example.com>", 250, "2.1.0")
        await expect(d, "RCPT TO:<john@doe.com>", 250, "2.1.5")
        await expect(d, "DATA", 354)
        r = await expect(
            d,
            "From: <info@example.com>\r\nTo: <john@doe.com>\r\nSubject: Example email\r\nMIME-Version: 1.0\r\n"
            "x-smtpeter-trackopens: false\r\n\r\nThis is example content\r\n.",
            250, "2.0.0",
        )
        assert r.text.startswith("2.0.0 Ok: queued as ")
        await expect(d, "QUIT", 221)
        await d.close()
    [msg] = spooled(data_dir)
    assert msg["context"]["credential"]["name"] == "smtpeter"
    assert msg["context"]["features"]["trackopens"] is False  # the header beats the credential
    assert b"x-smtpeter" not in msg["data"].lower()  # control headers never leave


async def test_enkod_starttls_then_lowercase_auth_plain_with_empty_login(data_dir, tls_cert):
    cfg = seed_config(data_dir, tls_cert)
    body = ENKOD_MESSAGE.decode("utf-8") + "."
    async with running_ingress(cfg) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("starttls"))
        await expect(d, None, 220, text="gw.test ESMTP smtpgate")
        ehlo = await expect(d, "EHLO openssl.client.net", 250)  # what `openssl s_client -starttls smtp` sends
        assert "STARTTLS" in ehlo.lines
        assert not any(line.startswith("AUTH") for line in ehlo.lines)  # no AUTH before TLS by default
        await expect(d, "STARTTLS", 220, "2.0.0")
        await d.writer.start_tls(client_tls(tls_cert), server_hostname="localhost")
        ehlo = await expect(d, "ehlo testmail.ru", 250)
        assert "AUTH PLAIN LOGIN" in ehlo.lines and "STARTTLS" not in ehlo.lines
        await expect(d, f"auth plain {ENKOD_SEED_AUTH}", 501, "5.5.2", "5.5.2 Cannot decode base64")
        await expect(d, f"auth plain {ENKOD_AUTH}", 235, "2.7.0")
        await expect(d, "mail from:test@testmail.ru", 250, "2.1.0")
        await expect(d, "rcpt to:test2@testmail.ru", 250, "2.1.5")
        await expect(d, "data", 354)
        r = await expect(d, body, 250, "2.0.0")
        assert r.text.startswith("2.0.0 Ok: queued as ")
        await d.close()
    [msg] = spooled(data_dir)
    assert msg["context"]["credential"]["name"] == "enkod"
    assert msg["recipients"] == ["test2@testmail.ru"]
    head, sep, rest = msg["data"].partition(b"\r\n\r\n")  # the empty line put in, as Postfix's cleanup
    assert sep and b"\r\nMIME-Version: 1.0\r\n" in head + b"\r\n" and rest.startswith(b"<!DOCTYPE html PUBLIC")
    assert b"message body\r\n</body>\r\n</html>\r\n" in rest


async def test_sendsay_demo_login_is_sandboxed_and_test_address_is_dropped(data_dir, tls_cert, recorder):
    cfg = seed_config(data_dir, tls_cert, relay={"sink_addresses": ["test@test.ru"]})
    message = (
        "Message-Id: <1@example.ru>\r\nDate: Thu, 29 Sep 2022 15:42:13 GMT\r\nFrom: shop@example.ru\r\n"
        "To: client@example.com\r\nSubject: hello\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "X-Campaign-Id: autumn_sale-2022\r\nX-Letter-Id: L-42\r\n\r\nhi\r\n."
    )
    async with running_ingress(cfg, [recorder]) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("starttls"))
        await expect(d, None, 220)
        await expect(d, "EHLO client.example.ru", 250)
        await d.starttls(client_tls(tls_cert))
        await expect(d, "EHLO client.example.ru", 250)
        await expect(d, "AUTH LOGIN", 334, text="VXNlcm5hbWU6")
        await expect(d, b64("demo.demo@smtpgate"), 334, text="UGFzc3dvcmQ6")
        await expect(d, b64("demo"), 235, "2.7.0")
        # a message to a real address: accepted, spooled, marked sandbox (never delivered)
        await expect(d, "MAIL FROM:<shop@example.ru>", 250)
        await expect(d, "RCPT TO:<client@example.com>", 250)
        await expect(d, "DATA", 354)
        r = await expect(d, message, 250, "2.0.0")
        queue_id = r.text.rsplit(" ", 1)[1]
        # Sendsay's test address: accepted and ignored, nothing spooled
        await expect(d, "MAIL FROM:<shop@example.ru>", 250)
        await expect(d, "RCPT TO:<test@test.ru>", 250, "2.1.5")
        await expect(d, "DATA", 354)
        await expect(d, message, 250, "2.0.0", "2.0.0 Ok")
        await expect(d, "QUIT", 221)
        await d.close()
    [msg] = spooled(data_dir)
    assert msg["queue_id"] == queue_id
    assert msg["context"]["credential"]["sandbox"] is True
    discarded = [e for e in recorder.events if e.type == "discarded"]
    assert [(e.recipient, e.credential, e.data["reason"]) for e in discarded] == [
        ("test@test.ru", "sendsay-demo", "sink address")
    ]


async def test_sendsay_allow_listed_ip_sends_without_auth(data_dir, tls_cert):
    cfg = seed_config(data_dir, tls_cert)
    async with running_ingress(cfg) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        await expect(d, None, 220)
        await expect(d, "HELO client.example.ru", 250)
        await expect(d, "MAIL FROM:<shop@example.ru>", 250, "2.1.0")
        await expect(d, "RCPT TO:<client@example.com>", 250, "2.1.5")
        await expect(d, "DATA", 354)
        await expect(d, "From: shop@example.ru\r\nTo: client@example.com\r\nSubject: hi\r\n\r\nhello\r\n.", 250, "2.0.0")
        await expect(d, "QUIT", 221)
        await d.close()
    [msg] = spooled(data_dir)
    assert msg["context"]["credential"]["name"] == "sendsay-office"


# -- the vendors' documented refusals, at the command they document (issue 10 §5) -------------
NO_IP_LIST = [c for c in CREDENTIALS if c["kind"] != "ip"] + [
    {"name": "enkod-old", "kind": "apikey", "secret": "enkod-old-key", "disabled": True},
]


async def test_smtpeter_mail_before_starttls_gets_530_with_its_words(data_dir, tls_cert):
    cfg = ingress_test_config(data_dir, tls_cert, chain=["open_pixel"], credentials=NO_IP_LIST)  # trackopens
    async with running_ingress(cfg) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("starttls"))
        await expect(d, None, 220)
        await expect(d, "EHLO mydomain.com", 250)
        r = await expect(d, "MAIL FROM:<info@example.com>", 530, "5.7.0")
        assert r.text.startswith("5.7.0 Must issue a STARTTLS command first")
        assert "does not accept unsecured connections" in r.text
        await d.close()


async def test_enkod_refusals_carry_enkods_words(data_dir, tls_cert):
    cfg = ingress_test_config(data_dir, tls_cert, chain=["open_pixel"], credentials=NO_IP_LIST)  # trackopens
    async with running_ingress(cfg) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("smtps"), tls=client_tls(tls_cert))
        await expect(d, None, 220)
        await expect(d, "ehlo testmail.ru", 250)
        r = await expect(d, "mail from:test@testmail.ru", 530, "5.7.0")  # "AUTH PLAIN authentication is not used"
        assert r.text == "5.7.0 Authentication required (no username or password)"
        wrong = base64.b64encode(b"\0\0not-the-key").decode()
        await expect(d, f"auth plain {wrong}", 535, "5.7.8",
                     "5.7.8 Authentication credentials invalid (wrong api key)")
        deleted = base64.b64encode(b"\0\0enkod-old-key").decode()
        r = await expect(d, f"auth plain {deleted}", 535, "5.7.8")
        assert r.text.endswith("(client is deleted)")
        await expect(d, f"auth plain {ENKOD_AUTH}", 235, "2.7.0")
        r = await expect(d, "mail from:<test@@testmail.ru>", 553, "5.1.7")
        assert r.text.endswith("(invalid from email)")
        r = await expect(d, "mail from:<test@testmail>", 553, "5.1.8")  # Postfix's reject_non_fqdn_sender
        assert r.text.endswith("(invalid from email)")
        await expect(d, "mail from:test@testmail.ru", 250, "2.1.0")
        await d.close()
    assert spooled(data_dir) == []
