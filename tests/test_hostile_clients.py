"""Hostile and broken clients against the real ingress, over real sockets.

Each test attacks a running ingress (garbage, NUL and 8-bit bytes, over-long lines, stalls,
disconnects in the middle of AUTH / DATA / a TLS handshake, TLS confusion, STARTTLS command
injection, floods) and then checks the server is unharmed: a fresh client still gets ``220`` and
``EHLO 250``, no session or asyncio task is left behind, nothing was queued from a message that
never ended, and nothing unexpected was logged (no traceback, no ERROR).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator

import pytest

from pipeline.accounts.secrets import hash_secret_pbkdf2
from pipeline.app.harness import Dialogue, client_tls, ingress_test_config, running_ingress, spooled
from pipeline.ingress import replies as R
from pipeline.ingress.service import IngressService
from tests.support.waiting import wait_for

KEY = {"name": "key", "kind": "apikey", "secret_hash": hash_secret_pbkdf2("key-0123456789", 1000)}
AUTH_PLAIN = "AUTH PLAIN " + base64.b64encode(b"\0apikey\0key-0123456789").decode()
IDLE = 0.5  # seconds: the stalled-client tests wait for this
BODY = b"From: app@shop.example\r\nTo: user@local.test\r\nSubject: hi\r\n\r\nhello\r\n"
BAD_LOG = ("Traceback", "Task exception was never retrieved", "Exception in callback", "never awaited")


class Server:
    """A running ingress plus the checks every attack ends with."""

    def __init__(self, ingress: IngressService, data_dir, caplog: pytest.LogCaptureFixture) -> None:
        self.ingress = ingress
        self.data_dir = data_dir
        self.caplog = caplog
        self.baseline = asyncio.all_tasks()

    def port(self, name: str = "plain") -> int:
        return self.ingress.port(name)

    async def connect(self, name: str = "plain", tls: ssl.SSLContext | None = None, timeout: float = 10.0) -> Dialogue:
        d = await Dialogue.connect("127.0.0.1", self.port(name), tls=tls, timeout=timeout)
        r = await d.reply()
        assert r.code == 220, r
        return d

    async def ehlo(self, name: str = "plain", tls: ssl.SSLContext | None = None) -> Dialogue:
        d = await self.connect(name, tls)
        assert (await d.cmd("EHLO client.test")).code == 250
        return d

    async def raw(self, name: str = "plain") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port(name)), 5)

    async def healthy(self, *, queued: int = 0, allowed: tuple[str, ...] = ()) -> None:
        """The server still serves a fresh client, and the attack left nothing behind."""
        d = await self.connect()
        r = await d.cmd("EHLO fresh.test")
        assert r.code == 250 and r.lines[0] == "gw.test", r
        assert (await d.cmd("QUIT")).code == 221
        await d.close()
        ingress = self.ingress
        await wait_for(lambda: not ingress.sessions, what="every session to end")
        await wait_for(lambda: ingress.connections.total == 0, what="connection counters to drop to 0")
        assert not any(ingress.connections.per_ip.values())
        me = asyncio.current_task()
        await wait_for(lambda: not (asyncio.all_tasks() - self.baseline - {me}), what="session tasks to finish")
        assert len(spooled(self.data_dir)) == queued
        for record in self.caplog.records:
            text = record.getMessage() + (self.caplog.text if record.exc_info else "")
            assert not any(marker in text for marker in BAD_LOG), text
            assert record.exc_info is None, text
            if record.levelno >= logging.ERROR:
                assert any(a in text for a in allowed), f"unexpected error log: {text}"


@contextlib.asynccontextmanager
async def serving(data_dir, tls_cert, caplog, idle: float) -> AsyncIterator[Server]:
    caplog.set_level(logging.INFO)
    cfg = ingress_test_config(
        data_dir, tls_cert, credentials=[KEY], relay={"local_domains": ["local.test"]},
        limits={"idle_timeout": idle, "max_connections_per_ip": 40, "max_message_size": 8 * 1024 * 1024},
    )
    async with running_ingress(cfg, grace=2.0) as (_, ingress):
        yield Server(ingress, data_dir, caplog)


@pytest.fixture
async def server(data_dir, tls_cert, caplog) -> AsyncIterator[Server]:
    """Idle timeout IDLE: stalled clients are cut quickly, and so are attacks that end in a stall."""
    async with serving(data_dir, tls_cert, caplog, IDLE) as s:
        yield s


@pytest.fixture
async def patient_server(data_dir, tls_cert, caplog) -> AsyncIterator[Server]:
    """Idle timeout 60 s, for the attacks that make the server (or the client) work for a while
    between two commands: with IDLE, the client's own slow sending of a huge line or bomb on a
    loaded machine (another test on the other core) could end the session with 421 before the next
    command, which is not what these tests are about. (The server's work after DATA, the scan
    among it, no longer counts against the client: tests/test_ingress_idle_timer.py.)"""
    async with serving(data_dir, tls_cert, caplog, 60.0) as s:
        yield s


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
        except (ConnectionError, ssl.SSLError):
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def client_hello() -> bytes:
    """A real TLS ClientHello, as the first flight of a TLS client."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def replies(data: bytes) -> list[str]:
    return [line for line in data.decode("ascii", "replace").split("\r\n") if line]


# -- garbage ---------------------------------------------------------------------------------
async def test_random_binary_garbage_gets_replies_or_a_close_never_a_crash(server):
    rng = random.Random(20261121)
    for _ in range(25):
        reader, writer = await server.raw()
        blob = rng.randbytes(rng.randrange(1, 4096))
        if rng.random() < 0.5:  # sometimes garbage with line ends in it, so it is read as commands
            blob = blob.replace(bytes([rng.randrange(256)]), b"\r\n")
        writer.write(blob + b"\r\nQUIT\r\n")
        data = await read_until_closed(reader)
        writer.close()
        lines = replies(data)
        assert lines and lines[0].startswith("220 ")
        for line in lines[1:]:
            assert line[:3].isdigit() and line[0] in "2345", line
    await server.healthy()


async def test_nul_and_8bit_bytes_in_commands_get_precise_replies(server):
    d = await server.connect()
    assert (await d.cmd(b"EHLO a\x00b\r\n")).code in (250, 500, 501)
    assert (await d.cmd("EHLO client.test")).code == 250
    cases = [
        b"MAIL FROM:<a\x00b@shop.example>\r\n",
        b"MAIL FROM:<\xff\xfe@shop.example>\r\n",
        b"MAIL FROM:<caf\xc3\xa9@shop.example>\r\n",
        b"\x00\x00\x00\r\n",
        b"\xff\xff\xff\xff\r\n",
        b"NOOP \x00\xff\r\n",
        b"RCPT TO:<x\x00@local.test>\r\n",
    ]
    for line in cases:
        r = await d.cmd(line)
        assert r.code in (250, 500, 501, 502, 503, 553, 555), (line, r)
        assert r.code == 250 or r.enhanced is not None, (line, r)
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd(b"RCPT TO:<us\x00er@local.test>\r\n")).code in (501, 553)
    assert (await d.cmd("QUIT")).code == 221
    await d.close()
    await server.healthy()


@pytest.mark.parametrize("size", [10 * 1024, 1024 * 1024], ids=["10KB", "1MB"])
async def test_over_long_command_without_crlf_is_refused_and_session_survives(server, size):
    d = await server.ehlo()
    await d.send(b"MAIL FROM:<" + b"a" * size)
    await d.send(b"\r\n")  # the line finally ends: one refusal for the whole line
    r = await d.reply()
    assert (r.code, r.enhanced) == (500, "5.5.2"), r
    assert (await d.cmd("NOOP")).code == 250
    await d.close()
    await server.healthy()


async def test_over_long_command_then_close_leaves_nothing_behind(server):
    reader, writer = await server.raw()
    writer.write(b"EHLO " + b"x" * (1024 * 1024))  # no CRLF ever
    await writer.drain()
    writer.close()
    await server.healthy()


async def test_half_a_command_then_stall_is_closed_by_the_idle_timeout(server):
    d = await server.ehlo()
    await d.send(b"MAIL FROM:<app@sh")  # and nothing more
    started = time.monotonic()
    r = await d.reply()
    assert (r.code, r.text) == (421, R.IDLE_TIMEOUT[4:]), r
    assert await d.closed()
    assert time.monotonic() - started < IDLE + 4.0
    await server.healthy()


async def test_client_stalling_inside_data_is_cut_and_nothing_is_queued(server):
    d = await server.ehlo()
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    await d.send(BODY + b"more and more")  # no end of DATA, then silence
    r = await d.reply()
    assert (r.code, r.text) == (421, R.IDLE_TIMEOUT[4:]), r
    assert await d.closed()
    await server.healthy(queued=0)


# -- disconnects in the middle of things -----------------------------------------------------
async def test_disconnect_in_the_middle_of_auth(server):
    for steps in (["AUTH LOGIN"], ["AUTH LOGIN", "YXBpa2V5"], ["AUTH PLAIN"]):
        d = await server.ehlo()
        for step in steps:
            assert (await d.cmd(step)).code == 334
        await d.send(b"a2V5LTAx")  # half an answer, no CRLF
        await d.close()
    await server.healthy()


async def test_disconnect_in_the_middle_of_data_queues_nothing(server):
    for tail in (b"", b"Subject: x\r\n", BODY, BODY + b".", BODY + b"\r\n.\r"):
        d = await server.ehlo()
        assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
        assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        await d.send(tail)
        await d.close()
    await server.healthy(queued=0)


async def test_disconnect_in_the_middle_of_the_starttls_handshake(server):
    hello = client_hello()
    for cut in (0, 5, len(hello) // 2, len(hello)):
        reader, writer = await server.raw("starttls")
        await reader.readline()
        writer.write(b"EHLO client.test\r\n")
        await writer.drain()
        while not (line := await asyncio.wait_for(reader.readline(), 5)).startswith(b"250 "):
            assert line.startswith(b"250-")
        writer.write(b"STARTTLS\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220 ")
        writer.write(hello[:cut])
        await writer.drain()
        writer.close()
    await server.healthy()


async def test_tls_client_that_stalls_mid_handshake_is_cut_by_the_idle_timeout(server):
    reader, writer = await server.raw("starttls")
    await reader.readline()
    writer.write(b"EHLO client.test\r\nSTARTTLS\r\n")
    await writer.drain()
    writer.write(client_hello()[:10])
    await writer.drain()
    await read_until_closed(reader, timeout=IDLE + 6)
    await wait_for(lambda: not server.ingress.sessions, timeout=IDLE + 6, what="the stalled TLS session to end")
    writer.close()
    await server.healthy()


# -- TLS confusion ---------------------------------------------------------------------------
async def test_garbage_and_plaintext_on_the_implicit_tls_port(server):
    rng = random.Random(465)
    for payload in (b"EHLO client.test\r\n", rng.randbytes(2000), b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x01\xff\xff"):
        reader, writer = await server.raw("smtps")
        writer.write(payload)
        await writer.drain()
        data = await read_until_closed(reader)
        assert b"220 " not in data  # no SMTP before TLS
        writer.close()
    await server.healthy()


async def test_silent_or_stalled_client_on_the_implicit_tls_port_is_cut_by_the_idle_timeout(server):
    """Before the handshake there is no session to count: the idle timeout is the only bound."""
    for payload in (b"", client_hello()[:10]):
        reader, writer = await server.raw("smtps")
        writer.write(payload)
        started = time.monotonic()
        assert await read_until_closed(reader, timeout=IDLE + 6) == b""
        assert time.monotonic() - started < IDLE + 4.0
        writer.close()
    await server.healthy()


async def test_tls_client_hello_on_the_plaintext_port(server):
    reader, writer = await server.raw("plain")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220 ")
    writer.write(client_hello())
    writer.write(b"\r\nQUIT\r\n")
    data = await read_until_closed(reader)
    assert replies(data)[-1].startswith("221 ")
    writer.close()
    # a TLS client that never reads the greeting gets a closed connection, not a hung one
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port("plain"), ssl=tls), 5)
    await server.healthy()


async def test_commands_pipelined_after_starttls_are_discarded(server, tls_cert):
    """CVE-2011-0411: plaintext sent with STARTTLS must not run inside the TLS session."""
    d = await server.ehlo("starttls")
    await d.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.example>\r\n")
    r = await d.reply()
    assert r.code == 220, r
    await asyncio.wait_for(d.writer.start_tls(client_tls(tls_cert), server_hostname="localhost"), 5)
    r = await d.cmd("EHLO client.test")  # the first reply in TLS is to this, not to RSET
    assert r.code == 250 and r.lines[0] == "gw.test", r
    assert "STARTTLS" not in r.lines
    r = await d.cmd("RCPT TO:<user@local.test>")  # no MAIL FROM survived
    assert (r.code, r.enhanced) == (503, "5.5.1"), r
    assert (await d.cmd("QUIT")).code == 221
    await d.close()
    await server.healthy()


# -- floods ----------------------------------------------------------------------------------
async def test_two_hundred_pipelined_recipients_get_replies_in_order(server):
    d = await server.ehlo()
    batch = [b"MAIL FROM:<app@shop.example>\r\n"] + [b"RCPT TO:<u%d@local.test>\r\n" % i for i in range(200)]
    await d.send(b"".join(batch) + b"RSET\r\n")
    assert (await d.reply()).code == 250
    codes = [(await d.reply()).code for _ in range(200)]
    assert codes == [250] * 100 + [452] * 100  # limits.max_recipients defaults to 100
    assert (await d.reply()).code == 250  # RSET
    await d.close()
    await server.healthy()


async def test_many_connections_opening_and_closing_fast(server):
    async def one(i: int) -> None:
        reader, writer = await server.raw()
        if i % 3 == 0:
            await reader.readline()
            writer.write(b"EHLO x\r\n")
        elif i % 3 == 1:
            writer.write(b"QUIT\r\n")
        writer.close()

    for start in range(0, 300, 30):
        await asyncio.gather(*(one(i) for i in range(start, start + 30)))
    await server.healthy()


# -- AUTH abuse ------------------------------------------------------------------------------
async def test_auth_with_huge_or_invalid_base64(patient_server):
    d = await patient_server.ehlo()
    r = await d.cmd("AUTH PLAIN " + "QUFB" * 300_000)  # 1.2 MB on the command line
    assert r.code == 500 and r.enhanced == "5.5.2", r
    r = await d.cmd("AUTH PLAIN !!!not-base64!!!")
    assert (r.code, r.text) == (501, R.AUTH_BASE64[4:]), r
    r = await d.cmd("AUTH PLAIN QUFB=QUFB")
    assert r.code == 501, r
    assert (await d.cmd("AUTH LOGIN")).code == 334
    r = await d.cmd("%%%%")
    assert (r.code, r.text) == (501, R.AUTH_BASE64[4:]), r
    assert (await d.cmd("AUTH LOGIN")).code == 334
    await d.send(b"QUFB" * 300_000)  # a 1.2 MB answer to the prompt, arriving in pieces
    r = await d.cmd(b"QUFB\r\nNOOP\r\n")  # its end, and a command
    assert (r.code, r.text) == (500, R.AUTH_LINE_TOO_LONG[4:]), r
    assert (await d.reply()).code == 250  # NOOP: the rest of the long line was not run as a command
    assert (await d.cmd(AUTH_PLAIN)).code == 235
    await d.close()
    await patient_server.healthy()


async def test_auth_login_cancelled_with_a_star(server):
    d = await server.ehlo()
    assert (await d.cmd("AUTH LOGIN")).code == 334
    r = await d.cmd("*")
    assert (r.code, r.text) == (501, R.AUTH_ABORTED[4:]), r
    assert (await d.cmd("AUTH LOGIN")).code == 334
    assert (await d.cmd("YXBpa2V5")).code == 334
    r = await d.cmd("*")
    assert (r.code, r.text) == (501, R.AUTH_ABORTED[4:]), r
    assert (await d.cmd(AUTH_PLAIN)).code == 235
    await d.close()
    await server.healthy()


# -- DATA abuse ------------------------------------------------------------------------------
async def test_data_with_five_megabytes_on_one_line_is_refused_and_the_session_goes_on(patient_server):
    d = await patient_server.ehlo()
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    r = await d.cmd(BODY + b"x" * (5 * 1024 * 1024) + b"\r\n.\r\n")
    assert (r.code, r.enhanced) == (500, "5.5.2"), r
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    r = await d.cmd(BODY + b".\r\n")
    assert r.code == 250, r
    await d.close()
    await patient_server.healthy(queued=1)


async def test_data_without_the_final_dot_then_close_queues_nothing(server):
    d = await server.ehlo()
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    await d.send(BODY * 1000)
    await d.close()
    await server.healthy(queued=0)


# -- octets that must never reach the next hop (issue 10 §2) ----------------------------------
NUL_SMUGGLING = {
    "nul in a header": b"From: app@shop.example\r\nSubject: a\x00b\r\n\r\nhello\r\n",
    "nul in the body": b"From: app@shop.example\r\nSubject: hi\r\n\r\nhel\x00lo\r\n",
    # the published "null before/after the dot" variants: a next hop that drops NULs would see
    # end-of-data and then the SMTP commands as a second, forged transaction
    "nul before the dot": BODY + b"\x00.\r\nMAIL FROM:<ceo@shop.example>\r\nRCPT TO:<x@local.test>\r\nDATA\r\n"
                          + b"From: ceo@shop.example\r\n\r\nforged\r\n",
    "nul after the dot": BODY + b".\x00\r\nMAIL FROM:<ceo@shop.example>\r\nRCPT TO:<x@local.test>\r\nDATA\r\n"
                         + b"From: ceo@shop.example\r\n\r\nforged\r\n",
}


@pytest.mark.parametrize("content", list(NUL_SMUGGLING.values()), ids=list(NUL_SMUGGLING))
async def test_a_nul_anywhere_in_the_message_is_refused_at_data_with_550_5_6_0(server, content):
    d = await server.ehlo()
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    r = await d.cmd(content + b".\r\n")
    assert (r.code, r.text) == (550, R.NUL_CHARACTER[4:]), r
    assert (await d.cmd("NOOP")).code == 250  # the smuggled commands were message text, not commands


# -- bombs: decided at DATA (a 5xx, or a 250 the chain can honour), never a 4xx ----------------
def nested_multiparts(levels: int) -> bytes:
    """``levels`` multiparts each inside the previous one, a text part at the bottom."""
    head = b"From: app@shop.example\r\nTo: user@local.test\r\nSubject: nest\r\nMIME-Version: 1.0\r\n"
    opens = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels))
    closes = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    return head + opens + b"Content-Type: text/plain\r\n\r\nhello" + closes


def many_html_parts(n: int) -> bytes:
    parts = b"".join(
        b'--p\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p><a href="https://example.com/%d">x</a></p>\r\n' % i
        for i in range(n)
    )
    return (b"From: app@shop.example\r\nTo: user@local.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n' + parts + b"--p--\r\n")


async def send_data(d: Dialogue, data: bytes):
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    return await d.cmd(data + b"\r\n.\r\n")


@pytest.mark.parametrize(
    ("levels", "expected"),
    [(1000, (554, "5.6.0")), (101, (554, "5.6.0")), (100, (250, "2.0.0"))],
    ids=["1000-levels", "just-past-the-limit", "at-the-limit"],
)
async def test_deep_mime_nesting_is_decided_at_data_never_a_4xx(patient_server, levels, expected):
    d = await patient_server.ehlo()
    r = await send_data(d, nested_multiparts(levels))
    assert (r.code, r.enhanced) == expected, r
    if r.code == 554:
        assert "nesting exceeds 100 levels" in r.text
    await d.close()
    await patient_server.healthy(queued=1 if expected[0] == 250 else 0)


async def test_ten_thousand_html_parts_are_refused_at_data_not_queued_then_failed(patient_server):
    # built before the session opens, and a patient server: building or scanning 10,000 parts on a
    # loaded machine can take longer than IDLE, which would then (rightly) close the session with 421
    bomb, just_over = many_html_parts(10_000), many_html_parts(101)
    d = await patient_server.ehlo()
    r = await send_data(d, bomb)
    assert (r.code, r.enhanced) == (552, "5.3.4"), r
    assert "more than 1000 MIME parts" in r.text
    r = await send_data(d, just_over)
    assert (r.code, r.enhanced, r.text) == (552, "5.3.4", "5.3.4 Message has more than 100 HTML parts "
                                            "(limits.max_html_parts)"), r
    await d.close()
    await patient_server.healthy(queued=0)


HEADER_INJECTION = {
    "LF in X-Campaign-Id": (b"X-Campaign-Id: abc\nBcc: <someone@example.net>\r\n", "bare LF in header line 2"),
    "LF in X-Letter-Id": (b"X-Letter-Id: l1\nReply-To: <thief@example.net>\r\n", "bare LF in header line 2"),
    "CR in X-Campaign-Id": (b"X-Campaign-Id: abc\rBcc: <someone@example.net>\r\n", "bare CR in header line 2"),
    "CR LF CR in a value": (b"Subject: hi\r\rBcc: <x@example.net>\r\n", "bare CR in header line 2"),
}


@pytest.mark.parametrize(("injected", "problem"), list(HEADER_INJECTION.values()), ids=list(HEADER_INJECTION))
async def test_a_bare_cr_or_lf_in_the_header_block_is_refused_naming_the_line(server, injected, problem):
    d = await server.ehlo()
    assert (await d.cmd("MAIL FROM:<app@shop.example>")).code == 250
    assert (await d.cmd("RCPT TO:<user@local.test>")).code == 250
    assert (await d.cmd("DATA")).code == 354
    r = await d.cmd(b"From: app@shop.example\r\n" + injected + b"Subject: hi\r\n\r\nhello\r\n.\r\n")
    assert (r.code, r.enhanced) == (550, "5.6.0"), r
    assert problem in r.text
    await d.close()
    await server.healthy(queued=0)


async def test_track_bounces_without_a_bounce_domain_is_refused_at_data(data_dir, tls_cert, caplog):
    caplog.set_level(logging.INFO)
    cfg = ingress_test_config(data_dir, tls_cert, chain=["bounce_tracking"], relay={"local_domains": ["local.test"]})
    async with running_ingress(cfg, grace=2.0) as (_, ingress):
        server = Server(ingress, data_dir, caplog)
        d = await server.ehlo()
        r = await send_data(d, BODY.replace(b"Subject: hi", b"Subject: hi\r\nX-SMTPeter-TrackBounces: true"))
        assert (r.code, r.enhanced) == (554, "5.3.5"), r
        assert "Bounce tracking is not configured" in r.text
        r = await send_data(d, BODY)  # without the switch: accepted and deliverable as it stands
        assert r.code == 250, r
        await d.close()
        await server.healthy(queued=1)
