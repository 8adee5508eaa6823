"""SMTP protocol behaviour of the ingress: relay safety, address syntax, DATA (smuggling, size,
long lines), admission verdicts as replies, the spool contract and inbound handlers."""

from __future__ import annotations

import base64
from typing import ClassVar

import pytest

from pipeline import Discard, Plugin, Reject, Session, TempFail, Transaction, hookimpl
from pipeline.accounts.secrets import hash_secret_pbkdf2
from pipeline.app.harness import Dialogue, client_tls, ingress_test_config, running_ingress, spooled

# a cheap hash keeps these many short tests fast; the scrypt path is tested in test_ingress_auth
KEY = {"name": "key", "kind": "apikey", "secret_hash": hash_secret_pbkdf2("key-0123456789", 1000)}
AUTH = "AUTH PLAIN " + base64.b64encode(b"\0apikey\0key-0123456789").decode()
BODY = b"From: app@shop.example\r\nTo: user@example.com\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"


def cfg(data_dir, tls_cert, **sections):
    sections.setdefault("credentials", [KEY])
    return ingress_test_config(data_dir, tls_cert, **sections)


async def greet(port: int, tls=None, *, auth: bool = False) -> Dialogue:
    d = await Dialogue.connect("127.0.0.1", port, tls=tls)
    assert (await d.reply()).code == 220
    assert (await d.cmd("EHLO client.test")).code == 250
    if auth:
        assert (await d.cmd(AUTH)).code == 235
    return d


async def send(d: Dialogue, mail_from: str, rcpts: list[str], body: bytes = BODY) -> str:
    """One transaction; returns the reply to the end of DATA as ``code text``."""
    assert (await d.cmd(f"MAIL FROM:<{mail_from}>")).code == 250
    for rcpt in rcpts:
        r = await d.cmd(f"RCPT TO:<{rcpt}>")
        assert r.code == 250, r
    assert (await d.cmd("DATA")).code == 354
    r = await d.cmd(body)
    return f"{r.code} {r.text}"


RELAY_TRICKS = [
    ("<user%evil.example@gw.test>", 554, "5.7.1 Relay access denied"),  # percent hack
    ("<@gw.test:user@evil.example>", 554, "5.7.1 Relay access denied"),  # source route out
    ("<@evil.example:user@gw.test>", 554, "5.7.1 Relay access denied"),  # source route in
    ('<"user@evil.example"@gw.test>', 554, "5.7.1 Relay access denied"),  # quoted local part
    ("<evil.example!user@gw.test>", 554, "5.7.1 Relay access denied"),  # bang path
    ("<user@gw.test@evil.example>", 553, "5.1.3 Invalid recipient address syntax"),
    ("<user@evil.example>", 530, "5.7.0 Authentication required (no username or password)"),
    ("<user%gw.test@evil.example>", 554, "5.7.1 Relay access denied"),
]


async def test_unauthenticated_client_cannot_relay_with_any_trick(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert, relay={"local_domains": ["gw.test"]})) as (_, ingress):
        d = await greet(ingress.port("plain"))
        assert (await d.cmd("MAIL FROM:<spammer@evil.example>")).code == 250
        for rcpt, code, text in RELAY_TRICKS:
            r = await d.cmd(f"RCPT TO:{rcpt}")
            assert (r.code, r.text) == (code, text), rcpt
        r = await d.cmd("DATA")
        assert (r.code, r.text) == (503, "5.5.1 Error: need RCPT command")
        # the gateway's own domain is accepted without AUTH
        assert (await d.cmd("RCPT TO:<postmaster@GW.test>")).code == 250
        await d.close()


async def test_authenticated_client_may_use_percent_and_quoted_local_parts(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
        assert (await d.cmd("RCPT TO:<user%host@example.com>")).code == 250
        assert (await d.cmd('RCPT TO:<"john doe"@example.com>')).code == 250
        assert (await d.cmd("RCPT TO:<a@b@example.com>")).code == 553
        await d.close()


@pytest.mark.parametrize(
    ("command", "code", "text"),
    [
        ("MAIL FROM:<not an address>", 553, "5.1.7 Invalid sender address syntax (invalid from email)"),
        ("MAIL FROM:<user@>", 553, "5.1.7 Invalid sender address syntax (invalid from email)"),
        ("MAIL FROM:<user@exa mple.com>", 553, "5.1.7 Invalid sender address syntax (invalid from email)"),
        ("MAIL FROM:<usér@example.com>", 553, "5.1.7 Invalid sender address syntax (invalid from email)"),
        ("MAIL FROM:<user@example.com", 501, "5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]"),
        ("MAIL TO:<user@example.com>", 501, "5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]"),
        ("MAIL FROM:<a@example.com> BODY=BINARYMIME", 501, "5.5.4 BODY must be 7BIT or 8BITMIME"),
        ("MAIL FROM:<a@example.com> SIZE=big", 501, "5.5.4 SIZE must be a number of octets"),
        ("MAIL FROM:<a@example.com> RET=HDRS", 555, "5.5.4 MAIL FROM parameters not recognized or not implemented"),
    ],
)
async def test_invalid_sender_syntax_gets_a_precise_reply(data_dir, tls_cert, command, code, text):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        r = await d.cmd(command)
        assert (r.code, r.text) == (code, text)
        await d.close()


async def test_envelope_forms_that_must_be_accepted(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        for mail in ("MAIL FROM: yo@midominio.com", "mail from:<a@example.com> BODY=8BITMIME SIZE=100",
                     "MAIL FROM:<>", "MAIL FROM:<a@[192.0.2.1]>"):
            r = await d.cmd(mail)
            assert (r.code, r.text) == (250, "2.1.0 Sender ok"), mail
            assert (await d.cmd("RSET")).text == "2.0.0 OK"
        assert (await d.cmd("mail from:<>")).code == 250
        assert (await d.cmd("rcpt to: destinatario@domain.com")).code == 250
        r = await d.cmd("RCPT TO:<>")
        assert (r.code, r.text) == (553, "5.1.3 Invalid recipient address syntax")
        r = await d.cmd("MAIL FROM:<a@example.com>")
        assert (r.code, r.text) == (503, "5.5.1 Error: nested MAIL command")
        assert (await d.cmd("data")).code == 354
        assert (await d.cmd(BODY)).text.startswith("2.0.0 Ok: queued as ")
        await d.close()
    [msg] = spooled(data_dir)
    assert msg["mail_from"] == ""


async def test_too_many_recipients(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert, limits={"max_recipients": 2})) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        assert (await d.cmd("MAIL FROM:<a@example.com>")).code == 250
        assert (await d.cmd("RCPT TO:<1@example.com>")).code == 250
        assert (await d.cmd("RCPT TO:<2@example.com>")).code == 250
        r = await d.cmd("RCPT TO:<3@example.com>")
        assert (r.code, r.text) == (452, "4.5.3 Too many recipients")
        await d.close()


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r.\n"]


@pytest.mark.parametrize("sequence", SMUGGLING, ids=[repr(s) for s in SMUGGLING])
async def test_smtp_smuggling_sequences_never_end_data(data_dir, tls_cert, sequence):
    smuggled = (
        b"From: app@shop.example\r\nSubject: first\r\n\r\nhello" + sequence
        + b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
        b"From: ceo@bank.example\r\nSubject: smuggled\r\n\r\npay now\r\n.\r\n"
    )
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
        assert (await d.cmd("RCPT TO:<user@example.com>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        r = await d.cmd(smuggled)
        assert (r.code, r.text) == (550, "5.5.2 Message refused: bare CR or LF next to a lone dot (SMTP smuggling)")
        r = await d.cmd("NOOP")  # the next reply answers our NOOP: nothing smuggled was executed
        assert (r.code, r.text) == (250, "2.0.0 OK")
        await d.close()
    assert spooled(data_dir) == []


async def test_bare_line_feeds_in_the_body_without_a_lone_dot_are_normalised(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        reply = await send(d, "app@shop.example", ["user@example.com"],
                           b"From: app@shop.example\r\nSubject: unix\r\n\r\nline one\nline two\r\n.\r\n")
        assert reply.startswith("250 2.0.0 Ok: queued as")
        await d.close()
    [msg] = spooled(data_dir)
    assert msg["data"].endswith(b"\r\n\r\nline one\r\nline two\r\n")
    assert b"\n" not in msg["data"].replace(b"\r\n", b"")


async def test_dot_stuffed_lines_are_unstuffed(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        reply = await send(d, "app@shop.example", ["user@example.com"],
                           b"Subject: dots\r\n\r\n..\r\n..leading\r\n.\r\n")
        assert reply.startswith("250")
        await d.close()
    assert spooled(data_dir)[0]["data"].endswith(b"\r\n\r\n.\r\n.leading\r\n")


async def test_oversized_message_and_long_lines_are_refused_and_session_continues(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert, limits={"max_message_size": 2000})) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        r = await d.cmd("EHLO again.test")
        assert "SIZE 2000" in r.lines
        r = await d.cmd("MAIL FROM:<a@example.com> SIZE=2001")
        assert (r.code, r.text) == (552, "5.3.4 Message size exceeds fixed maximum message size")
        reply = await send(d, "a@example.com", ["b@example.com"], b"Subject: x\r\n\r\n" + b"y" * 900 + b"\r\n" + b"z" * 900 + b"\r\n" + b"w" * 900 + b"\r\n.\r\n")
        assert reply == "552 5.3.4 Message size exceeds fixed maximum message size"
        reply = await send(d, "a@example.com", ["b@example.com"], b"Subject: x\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")
        assert reply == "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets including CRLF)"
        # a long line that ends exactly where a lone dot would be is still part of that line
        reply = await send(d, "a@example.com", ["b@example.com"], b"Subject: x\r\n\r\n" + b"y" * 1500 + b".\r\n.\r\n")
        assert reply.startswith("500 5.5.2")
        r = await d.cmd("NOOP " + "x" * 600)
        assert (r.code, r.enhanced) == (500, "5.5.2")
        r = await d.cmd("NOOP " + "x" * 5000)
        assert (r.code, r.enhanced) == (500, "5.5.2")
        assert (await d.cmd("NOOP")).code == 250
        await d.close()
    assert spooled(data_dir) == []


async def test_every_reply_carries_an_enhanced_status_code(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        await d.reply()
        for command in ("MAIL FROM:<a@example.com>", "", "NOOP", "RSET", "HELP", "VRFY user@example.com", "EXPN list",
                        "BOGUS", "HELO", "EHLO", "DATA", "RCPT TO:<a@example.com>"):
            r = await d.cmd(command)
            assert r.enhanced is not None and r.enhanced[0] == str(r.code)[0], (command, str(r))
        r = await d.cmd("QUIT")
        assert (r.code, r.text) == (221, "2.0.0 Bye")
        await d.close()


class Stoplist(Plugin):
    """An on_rcpt_to plugin, as the suppression plugin is."""

    name = "test_stoplist"
    seen: ClassVar[list[tuple[str, str | None]]] = []

    @hookimpl
    def on_rcpt_to(self, session: Session, transaction: Transaction, address: str) -> Reject | None:
        Stoplist.seen.append((address, session.credential.name if session.credential else None))
        if address.startswith("stopped@"):
            return Reject(550, "5.0.0", "Email is in the account stoplist")
        return None


class Exploding(Plugin):
    name = "test_exploding"

    @hookimpl
    def on_message(self, ctx) -> None:
        raise RuntimeError("plugin bug")


async def test_rcpt_verdicts_become_the_rcpt_reply(data_dir, tls_cert):
    Stoplist.seen = []
    async with running_ingress(cfg(data_dir, tls_cert), [Stoplist]) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        assert (await d.cmd("MAIL FROM:<a@example.com>")).code == 250
        r = await d.cmd("RCPT TO:<stopped@example.com>")
        assert (r.code, r.text) == (550, "5.0.0 Email is in the account stoplist")
        assert (await d.cmd("RCPT TO:<fine@example.com>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        assert (await d.cmd(BODY)).code == 250
        await d.close()
    assert Stoplist.seen == [("stopped@example.com", "key"), ("fine@example.com", "key")]
    assert spooled(data_dir)[0]["recipients"] == ["fine@example.com"]


async def test_plugin_failure_at_data_is_a_temporary_failure_and_nothing_is_queued(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert), [Exploding]) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        reply = await send(d, "a@example.com", ["b@example.com"])
        assert reply == "451 4.3.0 Temporary local problem, try again later"
        await d.close()
    assert spooled(data_dir) == []


async def test_spool_failure_is_451_and_claims_nothing(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (gateway, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        assert (await send(d, "a@example.com", ["b@example.com"])).startswith("250 2.0.0 Ok: queued as")
        gateway.spool._conn.close()  # the database goes away under the server
        reply = await send(d, "a@example.com", ["b@example.com"])
        assert reply == "451 4.3.0 Temporary local problem: message not queued, try again later"
        await d.close()


async def test_inbound_domain_is_accepted_without_auth_or_tls_and_goes_to_its_handler(data_dir, tls_cert):
    received: list[tuple[str, list[str], bytes]] = []
    fail = {"now": False}

    async def handler(mail_from: str, rcpts: list[str], data: bytes) -> None:
        if fail["now"]:
            raise OSError("disk full")
        received.append((mail_from, rcpts, data))

    async with running_ingress(cfg(data_dir, tls_cert)) as (gateway, ingress):
        gateway.inbound_handlers["bounces.gw.test"] = handler
        d = await greet(ingress.port("starttls"))  # require_tls listener, no STARTTLS, no AUTH
        assert (await d.cmd("MAIL FROM:<>")).code == 250
        assert (await d.cmd("RCPT TO:<b-abc123@Bounces.GW.test>")).code == 250
        r = await d.cmd("RCPT TO:<user@example.com>")
        assert (r.code, r.text) == (530, "5.7.0 Must issue a STARTTLS command first (this server does not accept unsecured connections)")
        r = await d.cmd("RCPT TO:<a%evil.example@bounces.gw.test>")
        assert (r.code, r.text) == (554, "5.7.1 Relay access denied")
        assert (await d.cmd("DATA")).code == 354
        r = await d.cmd(b"Subject: Undelivered Mail\r\n\r\nbounce\r\n.\r\n")
        assert (r.code, r.text) == (250, "2.0.0 Ok")
        fail["now"] = True
        assert (await d.cmd("MAIL FROM:<>")).code == 250
        assert (await d.cmd("RCPT TO:<b-xyz@bounces.gw.test>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        r = await d.cmd(b"Subject: Undelivered Mail\r\n\r\nbounce\r\n.\r\n")
        assert (r.code, r.enhanced) == (451, "4.3.0")
        await d.close()
        # an authenticated client mixing the inbound domain with others is asked to split
        d = await greet(ingress.port("plain"), auth=True)
        assert (await d.cmd("MAIL FROM:<a@example.com>")).code == 250
        assert (await d.cmd("RCPT TO:<user@example.com>")).code == 250
        r = await d.cmd("RCPT TO:<b-1@bounces.gw.test>")
        assert (r.code, r.enhanced) == (452, "4.5.3")
        await d.close()
    assert received == [("", ["b-abc123@Bounces.GW.test"], b"Subject: Undelivered Mail\r\n\r\nbounce\r\n")]
    assert spooled(data_dir) == []


async def test_pipelined_commands_get_replies_in_order(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("smtps"), tls=client_tls(tls_cert), auth=True)
        await d.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
        assert [(await d.reply()).code for _ in range(4)] == [250, 250, 250, 354]
        assert (await d.cmd(BODY)).code == 250
        await d.close()
    assert spooled(data_dir)[0]["recipients"] == ["b@example.com", "c@example.com"]


class Gatekeeper(Plugin):
    """Verdicts at MAIL FROM and at the end of DATA."""

    name = "test_gatekeeper"

    @hookimpl
    def on_mail_from(self, session: Session, transaction: Transaction, address: str) -> TempFail | None:
        if address.endswith("@greylisted.example"):
            return TempFail(450, "4.7.1", "Greylisted, try again later")
        return None

    @hookimpl
    def on_message(self, ctx) -> Discard | None:
        if ctx.message.get("Subject") == "drop me":
            return Discard("test")
        return None


async def test_mail_from_verdicts_and_discard_at_data(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert), [Gatekeeper]) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        r = await d.cmd("MAIL FROM:<a@greylisted.example>")
        assert (r.code, r.text) == (450, "4.7.1 Greylisted, try again later")
        reply = await send(d, "a@example.com", ["b@example.com"], b"Subject: drop me\r\n\r\nx\r\n.\r\n")
        assert reply == "250 2.0.0 Ok"
        reply = await send(d, "a@example.com", ["b@example.com"], b"Subject: keep me\r\n\r\nx\r\n.\r\n")
        assert reply.startswith("250 2.0.0 Ok: queued as ")
        await d.close()
    [msg] = spooled(data_dir)
    assert b"keep me" in msg["data"]


# -- issue 10 §2 and §5: bare line ends in the body, MAIL-time refusals, FQDN senders ----------


async def test_bare_newline_reject_refuses_a_bare_lf_or_cr_in_the_body(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert, limits={"bare_newline": "reject"})) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        for body in (b"Subject: unix\r\n\r\nline one\nline two\r\n.\r\n", b"Subject: mac\r\n\r\nline one\rtwo\r\n.\r\n"):
            reply = await send(d, "app@shop.example", ["user@example.com"], body)
            assert reply.startswith("550 5.6.0 Message refused: bare CR or LF in the body"), reply
        assert (await send(d, "app@shop.example", ["user@example.com"])).startswith("250 ")
        await d.close()
    assert len(spooled(data_dir)) == 1


async def test_mail_without_auth_is_refused_at_mail_when_nothing_could_be_accepted(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await greet(ingress.port("plain"))
        r = await d.cmd("MAIL FROM:<app@shop.example>")
        assert (r.code, r.text) == (530, "5.7.0 Authentication required (no username or password)")
        assert (await d.cmd(AUTH)).code == 235  # the session goes on: AUTH, then MAIL is accepted
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
        await d.close()
        d = await greet(ingress.port("starttls"))
        r = await d.cmd("MAIL FROM:<app@shop.example>")
        assert (r.code, r.enhanced) == (530, "5.7.0") and "Must issue a STARTTLS command first" in r.text
        await d.close()


async def test_mail_without_auth_is_accepted_when_a_local_domain_could_take_it(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert, relay={"local_domains": ["gw.test"]})) as (_, ingress):
        d = await greet(ingress.port("starttls"))
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250  # the recipient decides
        r = await d.cmd("RCPT TO:<user@example.com>")
        assert (r.code, r.enhanced) == (530, "5.7.0")
        assert (await d.cmd("RCPT TO:<postmaster@gw.test>")).code == 250
        await d.close()


async def test_an_ip_allow_listed_client_sends_without_auth(data_dir, tls_cert):
    office = {"name": "office", "kind": "ip", "networks": ["127.0.0.0/8"]}
    async with running_ingress(cfg(data_dir, tls_cert, credentials=[office])) as (_, ingress):
        d = await greet(ingress.port("plain"))
        assert (await send(d, "app@shop.example", ["user@example.com"])).startswith("250 2.0.0 Ok: queued as")
        await d.close()


@pytest.mark.parametrize(
    ("sender", "reject", "code"),
    [
        ("test@testmail", True, 553),
        ("test@testmail.", True, 553),
        ("test@testmail.ru", True, 250),
        ("test@[192.0.2.1]", True, 250),
        ("", True, 250),  # the null sender
        ("test@testmail", False, 250),
    ],
)
async def test_a_sender_domain_that_is_not_fully_qualified_gets_553_5_1_8(data_dir, tls_cert, sender, reject, code):
    config = cfg(data_dir, tls_cert, relay={"reject_non_fqdn_sender": reject})
    async with running_ingress(config) as (_, ingress):
        d = await greet(ingress.port("plain"), auth=True)
        r = await d.cmd(f"MAIL FROM:<{sender}>")
        assert r.code == code, r
        if code == 553:
            assert r.text == "5.1.8 Sender address rejected: domain not fully qualified (invalid from email)"
        await d.close()
