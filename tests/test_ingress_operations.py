"""Operations: connection limits, idle timeout, graceful shutdown, self-signed TLS, logging,
connect-phase verdicts, and ``smtpgate serve`` as a real process with SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import signal
import smtplib
import ssl
import sys
import time

import pytest

from pipeline import Reject, Session, hookimpl
from pipeline.accounts.secrets import hash_secret_pbkdf2
from pipeline.app.harness import Dialogue, ingress_test_config, running_ingress, spooled
from tests.support import ROOT

KEY = {"name": "key", "kind": "apikey", "secret_hash": hash_secret_pbkdf2("key-0123456789", 1000)}
AUTH = "AUTH PLAIN " + base64.b64encode(b"\0apikey\0key-0123456789").decode()
BODY = b"From: app@shop.example\r\nTo: user@example.com\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"


def cfg(data_dir, tls_cert, **sections):
    sections.setdefault("credentials", [KEY])
    return ingress_test_config(data_dir, tls_cert, **sections)


async def test_connection_limits_per_ip_and_in_total(data_dir, tls_cert):
    config = cfg(data_dir, tls_cert, limits={"max_connections_per_ip": 2, "max_connections": 3})
    async with running_ingress(config) as (_, ingress):
        port = ingress.port("plain")
        first = [await Dialogue.connect("127.0.0.1", port) for _ in range(2)]
        for d in first:
            assert (await d.reply()).code == 220
        third = await Dialogue.connect("127.0.0.1", port)
        r = await third.reply()
        assert (r.code, r.text) == (421, "4.7.0 Too many connections from your address, try again later")
        assert await third.closed()
        # the total limit applies across addresses (127.0.0.2 is another client here)
        other = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        d = Dialogue(*other, timeout=10)
        assert (await d.reply()).code == 220
        fourth = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
        r = await Dialogue(*fourth, timeout=10).reply()
        assert (r.code, r.text) == (421, "4.7.0 Too many connections, try again later")
        # a closed session frees its slot
        assert (await first[0].cmd("QUIT")).code == 221
        assert await first[0].closed()
        for _ in range(50):
            if ingress.connections.per_ip.get("127.0.0.1", 0) < 2:
                break
            await asyncio.sleep(0.01)
        again = await Dialogue.connect("127.0.0.1", port)
        assert (await again.reply()).code == 220
        for x in (first[1], d, again):
            await x.close()


async def test_idle_session_is_closed_with_421(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert, limits={"idle_timeout": 0.3})) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        assert (await d.reply()).code == 220
        r = await d.reply()  # nothing sent: the server gives up
        assert (r.code, r.text) == (421, "4.4.2 Idle timeout, closing connection")
        assert await d.closed()


async def test_the_idle_timeout_counts_from_the_last_command_not_from_the_connection(data_dir, tls_cert):
    """A client that keeps talking outlives the idle timeout (one timer per connection, pushed back by
    each command); once it goes quiet, the timeout cuts it."""
    async with running_ingress(cfg(data_dir, tls_cert, limits={"idle_timeout": 2.0})) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        assert (await d.reply()).code == 220
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # pacing the client, not waiting for the server
            assert (await d.cmd("NOOP")).code == 250
            await asyncio.sleep(0.25)
        r = await d.reply()
        assert (r.code, r.text) == (421, "4.4.2 Idle timeout, closing connection")
        assert await d.closed()


async def test_sigterm_drain_finishes_transactions_and_refuses_new_sessions(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        port = ingress.port("plain")
        busy = await Dialogue.connect("127.0.0.1", port)
        await busy.reply()
        await busy.cmd("EHLO busy.test")
        assert (await busy.cmd(AUTH)).code == 235
        assert (await busy.cmd("MAIL FROM:<a@example.com>")).code == 250
        assert (await busy.cmd("RCPT TO:<b@example.com>")).code == 250
        idle = await Dialogue.connect("127.0.0.1", port)
        await idle.reply()
        await idle.cmd("EHLO idle.test")

        stopping = asyncio.create_task(ingress.stop(10.0))
        r = await idle.reply()
        assert (r.code, r.text) == (421, "4.3.2 Service shutting down, try again later")
        assert await idle.closed()
        late = await Dialogue.connect("127.0.0.1", port)
        r = await late.reply()
        assert (r.code, r.enhanced) == (421, "4.3.2")
        assert not stopping.done()
        # the session in a transaction finishes it (durably), then is told to go away
        assert (await busy.cmd("DATA")).code == 354
        r = await busy.cmd(BODY)
        assert r.text.startswith("2.0.0 Ok: queued as ")
        r = await busy.reply()
        assert (r.code, r.enhanced) == (421, "4.3.2")
        await asyncio.wait_for(stopping, 10)
        assert ingress.servers == []
    assert len(spooled(data_dir)) == 1


async def test_grace_period_cuts_sessions_that_do_not_finish(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        await d.reply()
        await d.cmd("EHLO slow.test")
        assert (await d.cmd(AUTH)).code == 235
        assert (await d.cmd("MAIL FROM:<a@example.com>")).code == 250
        await asyncio.wait_for(ingress.stop(0.2), 5)
        assert await d.closed()


async def test_stop_closes_an_idle_pooled_tls_connection_at_once_with_421(data_dir, tls_cert):
    """A pooled client (smtplib after one message, not reading) costs no grace period (issue 10 §6).

    Over TLS, closing waits for the client's close_notify, which a client that is not reading
    never sends: the session must be cut, not waited for.
    """
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        port = ingress.port("starttls")

        def pooled() -> smtplib.SMTP:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
            client.starttls(context=ssl.create_default_context(cafile=str(tls_cert[0])))
            client.login("apikey", "key-0123456789")
            client.sendmail("a@example.com", ["b@example.com"], BODY[:-3])
            return client

        client = await asyncio.to_thread(pooled)
        await asyncio.wait_for(ingress.stop(30.0), 5)  # the grace period is never waited for
        assert not ingress.sessions
        code, text = await asyncio.to_thread(client.getreply)
        assert (code, text.decode()) == (421, "4.3.2 Service shutting down, try again later")
        client.close()
    assert len(spooled(data_dir)) == 1


async def test_self_signed_certificate_is_generated_when_none_is_configured(data_dir, caplog):
    caplog.set_level(logging.WARNING, "smtpgate")
    async with running_ingress(cfg(data_dir, None)) as (_, ingress):
        cert = data_dir / "tls" / "selfsigned-cert.pem"
        assert cert.exists() and (data_dir / "tls" / "selfsigned-key.pem").stat().st_mode & 0o077 == 0
        ctx = ssl.create_default_context(cafile=str(cert))
        d = await Dialogue.connect("127.0.0.1", ingress.port("smtps"), tls=ctx)
        assert (await d.reply()).code == 220
        await d.close()
    assert "no [tls] cert_file configured: using the self-signed certificate" in caplog.text
    before = cert.read_bytes()
    async with running_ingress(cfg(data_dir, None)):
        pass
    assert cert.read_bytes() == before  # reused, not regenerated on every start


class Blocklist:
    name = "test_blocklist"

    @hookimpl
    def on_connect(self, session: Session) -> Reject | None:
        if session.peer_ip == "127.0.0.1":
            return Reject(554, "5.7.1", "Your address is blocked")
        return None

    def __init__(self, config, env) -> None:
        pass


async def test_on_connect_verdict_replaces_the_greeting(data_dir, tls_cert):
    async with running_ingress(cfg(data_dir, tls_cert), [Blocklist]) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        r = await d.reply()
        assert (r.code, r.text) == (554, "5.7.1 Your address is blocked")
        assert await d.closed()


async def test_one_log_line_per_session_and_per_accepted_message(data_dir, tls_cert, caplog):
    caplog.set_level(logging.INFO, "smtpgate.ingress")
    async with running_ingress(cfg(data_dir, tls_cert)) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        await d.reply()
        await d.cmd("EHLO log.test")
        await d.cmd(AUTH)
        await d.cmd("MAIL FROM:<a@example.com>")
        await d.cmd("RCPT TO:<b@example.com>")
        await d.cmd("DATA")
        queue_id = (await d.cmd(BODY)).text.rsplit(" ", 1)[1]
        await d.cmd("QUIT")
        assert await d.closed()
        for _ in range(100):
            if not ingress.sessions:
                break
            await asyncio.sleep(0.01)
    accepted = [r.message for r in caplog.records if "accepted from=" in r.message]
    assert accepted == [f"queue_id={queue_id} session={accepted[0].split()[1][8:]} accepted from=<a@example.com> "
                        f"rcpts=1 size={len(spooled(data_dir)[0]['data'])} credential=key"]
    sessions = [r.message for r in caplog.records if " end=" in r.message]
    assert len(sessions) == 1
    assert re.search(r"listener=plain tls=no helo=log.test credential=key messages=1 rejected=0 .* end=quit",
                     sessions[0])


@pytest.mark.slow  # a few seconds: subprocesses / many generated cases (fast loop skips it)
async def test_smtpgate_serve_runs_until_sigterm(tmp_path):
    config = tmp_path / "smtpgate.toml"
    config.write_text(
        f'[gateway]\nhostname = "serve.test"\ndata_dir = "{tmp_path / "data"}"\n'
        '[[listeners]]\nname = "plain"\nport = 0\ntls = "none"\nrequire_tls = false\n'
        '[tracking]\nlisten_port = 0\n[api]\nlisten_port = 0\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from pipeline.app.cli import main; main()", "serve", "--config", str(config),
        "--workers", "1", stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )
    assert proc.stderr is not None
    port = None
    lines = []
    try:
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "serve exited early:\n" + "".join(lines)
            lines.append(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+) \(plain", line)
            if m:
                port = int(m.group(1))
        d = await Dialogue.connect("127.0.0.1", port)
        r = await d.reply()
        assert (r.code, r.text) == (220, "serve.test ESMTP smtpgate")
        await d.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow  # a few seconds: subprocesses / many generated cases (fast loop skips it)
async def test_smtpgate_serve_reports_a_busy_port_in_one_line(tmp_path):
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    busy = blocker.sockets[0].getsockname()[1]
    config = tmp_path / "smtpgate.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[[listeners]]\nname = "plain"\nport = {busy}\ntls = "none"\nrequire_tls = false\n'
        '[tracking]\nlisten_port = 0\n[api]\nlisten_port = 0\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from pipeline.app.cli import main; main()", "serve", "--config", str(config),
        "--workers", "1", stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    blocker.close()
    assert proc.returncode == 1
    assert f"smtpgate: cannot start: listener plain: cannot listen on 127.0.0.1:{busy}" in err.decode()
    assert "Traceback" not in err.decode()


# -- issue 4 point 10 (docs/ingress.md): a second SIGTERM stops at once, inside the grace period --


@pytest.mark.slow  # a few seconds: subprocesses / many generated cases (fast loop skips it)
async def test_second_sigterm_stops_serve_at_once_while_a_transaction_is_open(tmp_path):
    config = tmp_path / "smtpgate.toml"
    config.write_text(
        f'[gateway]\nhostname = "serve.test"\ndata_dir = "{tmp_path / "data"}"\nlog_level = "info"\n'
        '[[listeners]]\nname = "plain"\nport = 0\ntls = "none"\nrequire_tls = false\n'
        '[limits]\nshutdown_grace = 60\n'
        '[[credentials]]\nname = "local"\nkind = "ip"\nnetworks = ["127.0.0.0/8"]\n'
        '[tracking]\nlisten_port = 0\n[api]\nlisten_port = 0\n'
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
