"""Audit of issues 4 and 5: behaviour the issues ask for that no other test pinned down.

Issue 4: the error replies through real clients (smtplib, aiosmtplib), the on_helo/on_auth
verdicts and what the session shows a hook, a locked feature over SMTP, and the sandbox and
sink lines in the log. Issue 5: the default (Postfix) retry schedule, the exact Postfix-style
result line, a plugin that raises (not a TempFail) after acceptance, and the smarthost over
implicit TLS.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import signal
import smtplib
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import aiosmtplib
import pytest

from pipeline import Plugin, Reject, Session, Transaction, hookimpl
from pipeline.accounts.secrets import hash_secret_pbkdf2
from pipeline.app.gateway import Gateway
from pipeline.app.harness import Dialogue, client_tls, ingress_test_config, running_ingress, spooled
from pipeline.chain.driver import make_config
from pipeline.config import EgressSection
from pipeline.contract.context import Credential
from pipeline.egress.base import Copy
from pipeline.egress.smtp import SmtpEgress
from pipeline.spool import QueuedMessage
from tests.support import ROOT
from tests.support.smtp_sink import EventRecorder, SinkController, SinkHandler, server_tls, start_sink
from tests.test_delivery import enqueue, smtp_egress, start_service, stop

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

    name = "audit_phase_gate"
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


# -- issue 5 point 4: the default retry schedule and the Postfix-style line -------------------


def test_default_retry_schedule_doubles_from_5_minutes_to_1_hour_and_expires_after_5_days(tmp_path):
    config = make_config({"gateway": {"data_dir": str(tmp_path / "data")}})
    assert (config.spool.retry_min, config.spool.retry_max, config.spool.lifetime) == (300.0, 3600.0, 432000.0)
    t0 = 1_000_000.0
    now = {"t": t0 + 10}
    svc = Gateway(config).delivery_service(workers=0, clock=lambda: now["t"])
    delays = []
    for attempts in range(7):
        msg = QueuedMessage("Q1", "a@example.org", b"", {}, t0, ["x@example.net"], attempts={"x@example.net": attempts})
        out = svc._defer(msg, "x@example.net", "4.2.0", "451 4.2.0 busy", "mx.example.net", False)
        assert (out.state, out.attempts) == ("deferred", attempts + 1)
        delays.append(out.next_attempt - now["t"])
    assert delays == [300.0, 600.0, 1200.0, 2400.0, 3600.0, 3600.0, 3600.0]
    # the last attempt is made at the lifetime, not after it; past it the recipient expires with 4.4.7
    now["t"] = t0 + 432000 - 100
    msg = QueuedMessage("Q1", "a@example.org", b"", {}, t0, ["x@example.net"], attempts={"x@example.net": 40})
    assert svc._defer(msg, "x@example.net", "4.2.0", "busy", "r", False).next_attempt == t0 + 432000
    now["t"] = t0 + 432000
    out = svc._defer(msg, "x@example.net", "4.2.0", "451 4.2.0 busy", "r", False)
    assert (out.state, out.dsn) == ("expired", "4.4.7")
    assert out.reply == "message expired after 432000 s in the queue; last: 451 4.2.0 busy"


async def test_each_result_is_logged_as_one_postfix_style_line(data_dir, caplog):
    caplog.set_level(logging.INFO, "smtpgate")
    EventRecorder.reset()
    controller, _ = start_sink(known={"a@example.net"})
    try:
        gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port))
        try:
            qid = await enqueue(gw, ["a@example.net", "reject@example.net"])
            await EventRecorder.until(lambda: len(EventRecorder.events) >= 2)
        finally:
            await stop(gw, svc)
    finally:
        controller.stop()
        EventRecorder.reset()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{qid}: to=")]
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{controller.port}"
    assert len(lines) == 2, lines
    assert any(re.fullmatch(rf"{qid}: to=<a@example\.net>, relay={relay}, delay=\d+\.\d\d, dsn=2\.0\.0, tls=none, "
                            r"status=sent \(250 .+\)", line) for line in lines), lines
    assert any(re.fullmatch(rf"{qid}: to=<reject@example\.net>, relay={relay}, delay=\d+\.\d\d, dsn=5\.\d\.\d+, tls=none, "
                            r"status=bounced \(550 .+\)", line) for line in lines), lines


# -- issue 5 point 2: a plugin that raises after acceptance is retried, then fails loudly -------


class Raising(Plugin):
    """A plugin bug in a processing phase: an exception, not a verdict."""

    name = "audit_raising"

    @hookimpl
    def on_personalize(self, ctx: Any) -> None:
        raise RuntimeError("plugin bug in personalize")


async def test_plugin_exception_after_acceptance_is_deferred_then_failed_never_dropped(data_dir, caplog):
    EventRecorder.reset()
    gw, svc = await start_service(data_dir, egress={"type": "null"}, plugins=(Raising,),
                                  spool={"max_plugin_attempts": 2})
    try:
        qid = await enqueue(gw, ["x@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("failed")))
        record = gw.spool.show(qid)
    finally:
        await stop(gw, svc)
    types = [e.type for e in EventRecorder.events]
    EventRecorder.reset()
    assert types == ["deferred", "failed"]
    assert record is None or record["recipients"][0]["state"] == "failed"
    assert any(r.getMessage().startswith(f"{qid}: to=<x@example.net>") and "status=failed" in r.getMessage()
               for r in caplog.records)


# -- issue 5 point 3: the smarthost over implicit TLS (SMTPS), certificate verified ------------


async def test_smarthost_delivers_over_implicit_tls_with_a_verified_certificate(tls_cert):
    handler = SinkHandler()
    controller = SinkController(handler, ssl_context=server_tls(*tls_cert), data_size_limit=0)
    controller.start()
    try:
        section = EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="implicit",
                                ca_file=tls_cert[0])
        egress = SmtpEgress(section, "gw.test")
        [res] = await egress.deliver([Copy("Q1", "b@example.net", "a@example.org", MESSAGE)])
        await egress.close()
        untrusting = SmtpEgress(EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="implicit"),
                                "gw.test")
        [refused] = await untrusting.deliver([Copy("Q2", "c@example.net", "a@example.org", MESSAGE)])
        await untrusting.close()
    finally:
        controller.stop()
    assert (res.status, res.relay) == ("sent", f"127.0.0.1[127.0.0.1]:{controller.port}")
    assert [m.rcpt_tos for m in handler.messages] == [["b@example.net"]]
    # the same port refuses a client that does not trust the certificate: the delivery was over
    # TLS (aiosmtpd leaves session.ssl unset on implicit TLS), and verification is on by default
    assert (refused.status, refused.dsn) == ("deferred", "4.7.5")


# -- issue 4 point 10 (docs/ingress.md): a second SIGTERM stops at once, inside the grace period --


async def test_second_sigterm_stops_serve_at_once_while_a_transaction_is_open(tmp_path):
    config = tmp_path / "smtpgate.toml"
    config.write_text(
        f'[gateway]\nhostname = "serve.test"\ndata_dir = "{tmp_path / "data"}"\nlog_level = "info"\n'
        '[[listeners]]\nname = "plain"\nport = 0\ntls = "none"\nrequire_tls = false\n'
        '[limits]\nshutdown_grace = 60\n'
        '[[credentials]]\nname = "local"\nkind = "ip"\nnetworks = ["127.0.0.0/8"]\n'
        '[tracking]\nlisten_port = 0\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from pipeline.app.cli import main; main()", "serve", "--config", str(config),
        "--workers", "1", stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    assert proc.stderr is not None
    lines: list[str] = []

    async def until(pattern: str) -> re.Match[str]:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "serve exited early:\n" + "".join(lines)
            lines.append(line)
            if m := re.search(pattern, line):
                return m

    try:
        port = int((await until(r"listening on 127\.0\.0\.1:(\d+) \(plain")).group(1))
        d = await Dialogue.connect("127.0.0.1", port)
        assert (await d.reply()).code == 220
        assert (await d.cmd("EHLO busy.test")).code == 250
        assert (await d.cmd("MAIL FROM:<a@example.org>")).code == 250
        assert (await d.cmd("RCPT TO:<b@example.net>")).code == 250
        proc.send_signal(signal.SIGTERM)
        await until(r"received SIGTERM: draining \(grace 60s\)")
        assert proc.returncode is None  # the open transaction may finish: the grace period runs
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 20)
        elapsed = time.monotonic() - started
        rest = (await asyncio.wait_for(proc.stderr.read(), 10)).decode()
        await d.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 0 and elapsed < 20, (rc, elapsed)
    assert "received SIGTERM again: stopping now" in rest
    assert "Traceback" not in "".join(lines) + rest
