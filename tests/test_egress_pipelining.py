"""SMTP egress pipelining (RFC 2920): on a hop that offers PIPELINING a copy's MAIL, RCPT and DATA go out
in one write, and every reply (refusals, 421, hang-ups, time-outs, multi-line) ends in exactly the result
the command-by-command path gives. Each scenario runs against the same scripted hop with PIPELINING
offered and not offered, and the two runs are compared."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtplib.email import parse_address
from aiosmtplib.protocol import SMTPProtocol

from pipeline.config import EgressSection
from pipeline.egress.base import Copy, DeliveryResult
from pipeline.egress.smtp import HopPool, SmtpEgress, _parse_reply, mailbox, open_connection, send_copy
from tests.support import corpus_files, sample_files
from tests.support.postfix_sink import SMTP_SINK, offers_pipelining, start_smtp_sink

MSG = b"From: s@example.com\r\nTo: r@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
DOTTED = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast line without CRLF"

HANG_UP = None  # a scripted "reply" that closes the connection instead
SILENCE = b""  # a scripted "reply" that never comes
THEN_HANG_UP = b"<hang-up>"  # at the end of a scripted reply: close the connection right behind it
BIG = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 2000  # 2 MB: still being written at a hang-up


# -- a next hop whose every reply the test scripts ---------------------------------------------


@dataclass
class Hop:
    """A small SMTP server on 127.0.0.1 (port 0) that behaves like Postfix's smtpd for pipelined
    commands (each one answered in order; RCPT after a refused MAIL gets 503, DATA without a recipient
    554) and answers what ``script`` says for ``"VERB address"`` (DATA and ``.``, the end of the data:
    the transaction's first recipient). It keeps every chunk it read, so a test can see what arrived
    together, and the raw bytes of every data phase."""

    pipelining: bool = True
    tls: ssl.SSLContext | None = None
    script: dict[str, bytes | None] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)
    data_phases: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    dribble: bool = False  # write replies one byte at a time
    server: asyncio.Server | None = None

    async def start(self) -> Hop:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _HopSession(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def clear(self) -> None:
        self.chunks.clear()
        self.commands.clear()
        self.data_phases.clear()
        self.connections = 0


class _HopSession(asyncio.Protocol):
    def __init__(self, hop: Hop) -> None:
        self.hop = hop
        self.buf = b""
        self.in_data = False
        self.stalled = False
        self.tls_active = False
        self.sender_ok = False
        self.rcpts: list[str] = []
        self.transport: asyncio.Transport | None = None
        self.drip_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.hop.connections += 1
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send(b"220 hop ESMTP\r\n")

    def send(self, reply: bytes) -> None:
        assert self.transport is not None
        if not self.hop.dribble:
            self.transport.write(reply)
            return
        loop = asyncio.get_running_loop()
        for i in range(len(reply)):
            self.drip_at = max(self.drip_at, loop.time()) + 0.001
            loop.call_at(self.drip_at, self._write_if_open, reply[i : i + 1])

    def _write_if_open(self, byte: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(byte)

    def data_received(self, data: bytes) -> None:
        self.hop.chunks.append(data)
        self.buf += data
        self.process()

    def process(self) -> None:
        while not self.stalled and self.transport is not None and not self.transport.is_closing():
            if self.in_data:
                if self.buf and self.hop.script.get(f"BYTES {self.rcpts[0]}", b"x") is HANG_UP:
                    self.transport.close()  # in the middle of the message (unread bytes: a reset)
                    return
                end = 3 if self.buf.startswith(b".\r\n") else self.buf.find(b"\r\n.\r\n") + 5
                if end == 4:
                    return
                self.hop.data_phases.append(self.buf[:end])
                self.buf, self.in_data = self.buf[end:], False
                self.answer(".", self.rcpts[0], b"250 2.0.0 Ok: queued as 4XyZ\r\n")
                self.sender_ok, self.rcpts = False, []
                continue
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                return
            self.buf = rest
            self.command(line)

    def command(self, line: bytes) -> None:
        self.hop.commands.append(line)
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        address = arg.partition(b"<")[2].partition(b">")[0].decode("utf-8", "replace")
        if verb == b"EHLO":
            ext = [b"hop", b"SIZE 10000000", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES"]
            if self.hop.pipelining:
                ext.insert(1, b"PIPELINING")
            if self.hop.tls is not None and not self.tls_active:
                ext.append(b"STARTTLS")
            self.send(b"".join(b"250-" + e + b"\r\n" for e in ext[:-1]) + b"250 " + ext[-1] + b"\r\n")
        elif verb == b"STARTTLS":
            self.send(b"220 2.0.0 Ready to start TLS\r\n")
            self.stalled, self.buf = True, b""
            asyncio.get_running_loop().create_task(self._start_tls())
        elif verb == b"MAIL":
            self.sender_ok = self.answer("MAIL", address, b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT":
            if not self.sender_ok:
                self.send(b"503 5.5.1 Error: need MAIL command\r\n")
            elif self.answer("RCPT", address, b"250 2.1.5 Ok\r\n"):
                self.rcpts.append(address)
        elif verb == b"DATA":
            if not self.sender_ok:
                self.send(b"503 5.5.1 Error: need MAIL command\r\n")
            elif not self.rcpts:
                self.send(b"554 5.5.1 Error: no valid recipients\r\n")
            else:
                self.in_data = self.answer("DATA", self.rcpts[0], b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"RSET":
            self.sender_ok, self.rcpts = False, []
            self.send(b"250 2.0.0 Ok\r\n")
        elif verb == b"QUIT":
            self.send(b"221 2.0.0 Bye\r\n")
            assert self.transport is not None
            self.transport.close()
        else:
            self.send(b"250 2.0.0 Ok\r\n")

    def answer(self, verb: str, address: str, default: bytes) -> bool:
        """Send the scripted reply (or ``default``): whether it was a positive one."""
        assert self.transport is not None
        reply = self.hop.script.get(f"{verb} {address}", default)
        if reply is HANG_UP:
            self.transport.close()
            return False
        if reply == SILENCE:
            self.stalled = True
            return False
        closing = reply.startswith(b"421") or reply.endswith(THEN_HANG_UP)
        self.send(reply.removesuffix(THEN_HANG_UP))
        if closing:
            self.transport.close()
        return reply[:1] in (b"2", b"3")

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.hop.tls is not None
        loop = asyncio.get_running_loop()
        self.transport = await loop.start_tls(self.transport, self, self.hop.tls, server_side=True)  # type: ignore[assignment]
        self.tls_active, self.stalled = True, False
        self.process()  # what came in during the handshake

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


# -- running the same copies with and without PIPELINING -----------------------------------------


async def _deliver(hop: Hop, copies: list[Copy], *, pipelining: bool, timeout: float = 5.0,
                   tls: str = "none", ca_file: str | None = None) -> list[DeliveryResult]:
    """The copies one after the other over a one-connection pool to ``hop``."""
    hop.pipelining = pipelining
    hop.clear()

    async def connect() -> aiosmtplib.SMTP:
        return await open_connection("127.0.0.1", hop.port, helo="gw.test", timeout=timeout, tls=tls,
                                     verify=ca_file is not None, ca_file=ca_file)

    pool = HopPool("127.0.0.1", hop.port, 1, connect)
    try:
        return [await send_copy(pool, c, verified=ca_file is not None) for c in copies]
    finally:
        await pool.close()


def _pipelined_chunks(hop: Hop) -> list[bytes]:
    """The chunks in which MAIL, RCPT and DATA arrived together."""
    return [c for c in hop.chunks if b"MAIL FROM:" in c and b"RCPT TO:" in c and b"DATA\r\n" in c]


async def _both(hop: Hop, copies: list[Copy], **kw: object) -> tuple[list[DeliveryResult], dict[str, int]]:
    """Deliver ``copies`` without and with PIPELINING; assert identical results, the same number of
    connections and RSETs, and identical data phases on the wire. The results and the pipelined run's
    observations."""
    plain = await _deliver(hop, copies, pipelining=False, **kw)  # type: ignore[arg-type]
    seen_plain = (hop.connections, hop.commands.count(b"RSET"), list(hop.data_phases))
    assert not _pipelined_chunks(hop)
    piped = await _deliver(hop, copies, pipelining=True, **kw)  # type: ignore[arg-type]
    assert piped == plain
    assert (hop.connections, hop.commands.count(b"RSET"), hop.data_phases) == seen_plain
    return piped, {"connections": hop.connections, "rsets": hop.commands.count(b"RSET"),
                   "pipelined": len(_pipelined_chunks(hop))}


def _copy(rcpt: str = "r@example.net", sender: str = "s@example.com", data: bytes = MSG) -> Copy:
    return Copy("Q1", rcpt, sender, data)


@pytest.fixture
async def hop() -> AsyncIterator[Hop]:
    h = await Hop().start()
    yield h
    await h.stop()


# -- the pipelined path is taken, and the wire is the same -----------------------------------------


async def test_mail_rcpt_and_data_arrive_in_one_read_and_the_data_phase_is_byte_identical(hop: Hop) -> None:
    typical = [p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for p in (sample_files() + corpus_files())[:4]]
    copies = [_copy(f"r{i}@example.net", data=d) for i, d in enumerate([MSG, DOTTED, b"", b".\r\n", *typical])]
    copies.append(_copy("jörg@exämple.de", data="Subject: ü\r\n\r\nGrüße\r\n".encode()))  # SMTPUTF8, 8BITMIME
    plain = await _deliver(hop, copies, pipelining=False)
    plain_commands, plain_phases = list(hop.commands), list(hop.data_phases)
    assert not _pipelined_chunks(hop)  # one command per read without PIPELINING
    piped = await _deliver(hop, copies, pipelining=True)
    assert [r.status for r in piped] == ["sent"] * len(copies) and piped == plain
    assert len(_pipelined_chunks(hop)) == len(copies)  # the server had them before it answered MAIL
    assert hop.commands == plain_commands  # the same MAIL (SIZE, BODY, SMTPUTF8) and RCPT lines
    assert hop.data_phases == plain_phases and len(plain_phases) == len(copies)
    assert hop.connections == 1
    assert hop.data_phases[1] == b"Subject: dots\r\n\r\n..leading dot\r\n...two dots\r\n..\r\nlast line without CRLF\r\n.\r\n"


async def test_data_that_is_not_crlf_clean_still_goes_through_sendmail(hop: Hop) -> None:
    [res] = await _deliver(hop, [_copy(data=b"Subject: bare\n\nLF only\n")], pipelining=True)
    assert res.status == "sent" and not _pipelined_chunks(hop)
    assert hop.data_phases == [b"Subject: bare\r\n\r\nLF only\r\n.\r\n"]


# -- every refusal: the same result as command by command ----------------------------------------

BAD = "bad@example.net"
SCENARIOS: dict[str, tuple[dict[str, bytes | None], str]] = {
    # name: (script, the first copy's sender or recipient is BAD where the script names it)
    "mail 550": ({f"MAIL {BAD}": b"550 5.7.1 <bad@example.net>: Sender address rejected: Access denied\r\n"}, "sender"),
    "mail 451": ({f"MAIL {BAD}": b"451 4.3.0 Error: queue file write error\r\n"}, "sender"),
    "rcpt 550": ({f"RCPT {BAD}": b"550 5.1.1 <bad@example.net>: Recipient address rejected: User unknown\r\n"}, "rcpt"),
    "rcpt 452": ({f"RCPT {BAD}": b"452 4.2.2 <bad@example.net>: mailbox full\r\n"}, "rcpt"),
    "rcpt 550 multi-line": ({f"RCPT {BAD}": b"550-5.1.1 The email account that you tried to reach does\r\n"
                                            b"550-5.1.1 not exist. Please try\r\n550 5.1.1 double-checking.\r\n"},
                            "rcpt"),
    "data 554": ({f"DATA {BAD}": b"554 5.7.1 Error: too many hops\r\n"}, "rcpt"),
    "final 552": ({f". {BAD}": b"552 5.3.4 Error: message file too big\r\n"}, "rcpt"),
    "final 451": ({f". {BAD}": b"451 4.3.0 Error: queue file write error\r\n"}, "rcpt"),
    "final 250 multi-line": ({f". {BAD}": b"250-2.0.0 Ok\r\n250-more text\r\n250 2.0.0 queued as 1234\r\n"}, "rcpt"),
    "mail 421": ({f"MAIL {BAD}": b"421 4.3.2 Service shutting down\r\n"}, "sender"),
    "rcpt 421": ({f"RCPT {BAD}": b"421 4.7.0 Too many errors\r\n"}, "rcpt"),
    "data 421": ({f"DATA {BAD}": b"421 4.3.2 Service shutting down\r\n"}, "rcpt"),
    "final 421": ({f". {BAD}": b"421 4.3.2 Service shutting down\r\n"}, "rcpt"),
    "hang-up at mail": ({f"MAIL {BAD}": HANG_UP}, "sender"),
    "hang-up at rcpt": ({f"RCPT {BAD}": HANG_UP}, "rcpt"),
    "hang-up at data": ({f"DATA {BAD}": HANG_UP}, "rcpt"),
    "hang-up in the message": ({f"BYTES {BAD}": HANG_UP}, "rcpt"),
    "hang-up before the final reply": ({f". {BAD}": HANG_UP}, "rcpt"),
    "hang-up right behind mail 550": ({f"MAIL {BAD}": b"550 5.7.1 refused\r\n" + THEN_HANG_UP}, "sender"),
    "hang-up right behind rcpt 550": ({f"RCPT {BAD}": b"550 5.1.1 unknown\r\n" + THEN_HANG_UP}, "rcpt"),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_each_reply_gives_the_same_result_pipelined_or_not(hop: Hop, name: str) -> None:
    script, who = SCENARIOS[name]
    hop.script = script
    first = _copy(sender=BAD) if who == "sender" else _copy(BAD, data=BIG if "message" in name else MSG)
    results, seen = await _both(hop, [first, _copy("ok@example.net")])
    assert seen["pipelined"] == 2 if seen["connections"] == 1 else seen["pipelined"] >= 1
    assert results[1].status == "sent"  # the next copy always gets through
    status = results[0].status
    code = name.split()[-1] if name.startswith("hang-up right") else name.split()[1]
    if name.startswith("hang-up") and code != "550":
        assert (status, results[0].dsn) == ("deferred", "4.4.2") and "lost connection with" in results[0].reply
    elif code == "250":
        assert status == "sent" and results[0].reply == "250 2.0.0 Ok more text 2.0.0 queued as 1234"
    else:
        assert results[0].reply.startswith(code) and status == ("bounced" if code[0] == "5" else "deferred")
    closing = name.startswith("hang-up") or code == "421"
    assert seen["connections"] == (2 if closing else 1)  # a 421 or a hang-up: never reused
    assert seen["rsets"] == (0 if closing or code == "250" else 1)  # a refusal resets the envelope


@pytest.mark.parametrize("script", [{f"MAIL {BAD}": b"250 2.1.0 Ok\r\n" + THEN_HANG_UP},
                                    {f"RCPT {BAD}": b"250 2.1.5 Ok\r\n" + THEN_HANG_UP},
                                    {f"DATA {BAD}": b"354 go ahead\r\n" + THEN_HANG_UP}], ids=["mail", "rcpt", "data"])
async def test_a_hang_up_right_behind_a_positive_reply_is_the_same_deferral(hop: Hop, script: dict[str, bytes | None]) -> None:
    """The one difference in text. Command by command, aiosmtplib ignores a hang-up that comes while its
    last reply waits to be picked up, and its next command finds the transport closing ("Connection
    lost"). Pipelined, the server has the next command already, so this hop looks exactly like one that
    hangs up when that command arrives, and the result is what the command-by-command path gives for
    that ("Unexpected EOF received", the ``hang-up at ...`` scenarios above). Same status, DSN, retry."""
    hop.script = script
    first = _copy(sender=BAD) if "MAIL" in next(iter(script)) else _copy(BAD)
    plain = await _deliver(hop, [first, _copy()], pipelining=False)
    piped = await _deliver(hop, [first, _copy()], pipelining=True)
    assert [(r.status, r.dsn, r.relay) for r in piped] == [(r.status, r.dsn, r.relay) for r in plain]
    assert piped[0].status == "deferred" and piped[0].dsn == "4.4.2" and piped[1].status == "sent"
    assert plain[0].reply.endswith(": Connection lost") and piped[0].reply.endswith(": Unexpected EOF received")
    assert hop.connections == 2


async def test_a_refused_recipient_resets_and_the_next_copy_goes_on_the_same_connection(hop: Hop) -> None:
    hop.script = {f"RCPT {BAD}": b"550 5.1.1 no such user\r\n"}
    results = await _deliver(hop, [_copy(BAD), _copy("a@example.net"), _copy(BAD), _copy("b@example.net")],
                             pipelining=True)
    assert [r.status for r in results] == ["bounced", "sent", "bounced", "sent"]
    assert (results[0].dsn, results[0].reply) == ("5.1.1", "550 5.1.1 no such user")
    assert hop.connections == 1 and hop.commands.count(b"RSET") == 2
    # RFC 2920: the DATA pipelined behind the refused RCPT was answered (554) and the reply dropped
    assert hop.commands.count(b"DATA") == 4 and len(hop.data_phases) == 2


async def test_a_time_out_and_a_malformed_reply_give_the_same_result_and_a_fresh_connection(hop: Hop) -> None:
    hop.script = {f"RCPT {BAD}": SILENCE}
    results, seen = await _both(hop, [_copy(BAD), _copy()], timeout=0.3)
    assert results[0].status == "deferred" and "Timed out waiting for server response" in results[0].reply
    assert results[1].status == "sent" and seen["connections"] == 2

    # aiosmtplib keeps the bad line in its buffer and fails the next copy on the same connection too;
    # the pipelined path closes the connection instead: the first copy's result is the same.
    hop.script = {f"MAIL {BAD}": b"hello there\r\n"}
    plain = await _deliver(hop, [_copy(sender=BAD), _copy()], pipelining=False)
    piped = await _deliver(hop, [_copy(sender=BAD), _copy()], pipelining=True)
    assert piped[0] == plain[0] and piped[0].reply.startswith("-1 Malformed SMTP response line: hello there")
    assert piped[1].status == "sent" and hop.connections == 2


async def test_replies_arriving_one_byte_at_a_time(hop: Hop) -> None:
    hop.dribble = True
    hop.script = {f"RCPT {BAD}": b"550-5.1.1 first\r\n550 5.1.1 second\r\n"}
    results, seen = await _both(hop, [_copy(BAD), _copy()])
    assert [r.status for r in results] == ["bounced", "sent"] and results[0].reply == "550 5.1.1 first 5.1.1 second"
    assert seen == {"connections": 1, "rsets": 1, "pipelined": 2}


async def test_bad_addresses_are_refused_before_anything_is_sent(hop: Hop) -> None:
    copies = [_copy("a b@example.net"), _copy("x@example.net\x01"), _copy(sender="x y@example.com"),
              _copy("\udc80@example.net"), _copy()]
    results, seen = await _both(hop, copies)
    assert [(r.status, r.dsn) for r in results] == [("bounced", "5.1.3")] * 4 + [("sent", "2.0.0")]
    assert "prohibited control character" in results[1].reply and "surrogates" in results[3].reply
    assert seen["connections"] == 1


# -- TLS, flow control, a real Postfix smtp-sink ------------------------------------------------


async def test_pipelining_over_starttls_with_a_verified_certificate(tls_cert: tuple[Path, Path]) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*map(str, tls_cert))
    hop = await Hop(tls=server_ctx).start()
    hop.script = {f"RCPT {BAD}": b"550 5.1.1 no such user\r\n", f". {BAD}": b"552 5.3.4 too big\r\n"}
    try:
        copies = [_copy(), _copy(BAD), _copy("b@example.net", data=DOTTED)]
        results, seen = await _both(hop, copies, tls="starttls", ca_file=str(tls_cert[0]))
    finally:
        await hop.stop()
    assert [r.status for r in results] == ["sent", "bounced", "sent"], results
    assert results[0].tls.startswith("TLSv1") and results[0].tls.endswith("verified")
    assert seen == {"connections": 1, "rsets": 1, "pipelined": 3}  # seen decrypted: one TLS record


async def test_a_large_message_to_a_slow_reader_pauses_and_resumes_writing(hop: Hop) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 8000  # about 8 MB
    paused: list[str] = []
    original_pause, original_resume = SMTPProtocol.pause_writing, SMTPProtocol.resume_writing

    def pause(self: SMTPProtocol) -> None:
        paused.append("pause")
        original_pause(self)

    def resume(self: SMTPProtocol) -> None:
        paused.append("resume")
        original_resume(self)

    SMTPProtocol.pause_writing, SMTPProtocol.resume_writing = pause, resume  # type: ignore[method-assign,assignment]
    try:
        results = await _deliver(hop, [_copy(data=big), _copy()], pipelining=True)
    finally:
        SMTPProtocol.pause_writing, SMTPProtocol.resume_writing = original_pause, original_resume  # type: ignore[method-assign]
    assert [r.status for r in results] == ["sent", "sent"]
    assert paused and paused[0] == "pause" and paused[-1] == "resume"  # passed on to aiosmtplib's protocol
    assert hop.data_phases[0] == big + b".\r\n" and hop.connections == 1


@pytest.mark.skipif(not Path(SMTP_SINK).exists(), reason="Postfix's smtp-sink is not installed")
@pytest.mark.parametrize("flags", [[], ["-q", "rcpt"], ["-q", "data"], ["-q", "."], ["-Q", "mail"], ["-Q", "rcpt"],
                                   ["-Q", "data"], ["-Q", "."]], ids=" ".join)
async def test_smtp_sink_with_and_without_pipelining_gives_the_same_results(flags: list[str]) -> None:
    """Postfix's smtp-sink, offering PIPELINING (``-p``: not); ``-q CMD``: it hangs up when that
    command comes, ``-Q CMD``: it answers 421 and hangs up. (Its ``-r``/``-f`` refusals turn
    PIPELINING off: the scripted hop above covers refusals.)"""
    outcomes = []
    for pipelining in (False, True):
        sink, port = await asyncio.to_thread(start_smtp_sink, *flags, *([] if pipelining else ["-p"]))
        egress = SmtpEgress(EgressSection(type="smtp", host="127.0.0.1", port=port, tls="none",
                                          connections_per_hop=2), "gw.test")
        try:
            assert offers_pipelining(port) == pipelining
            results = await egress.deliver([_copy(f"r{i}@example.net", data=DOTTED) for i in range(6)])
        finally:
            await egress.close()
            sink.terminate()
            sink.wait(5)
        outcomes.append([dataclasses_replace_relay(r) for r in results])
    plain, piped = outcomes
    assert piped == plain
    assert {r.status for r in piped} == ({"sent"} if not flags else {"deferred"}), piped


def dataclasses_replace_relay(result: DeliveryResult) -> DeliveryResult:
    """The result without the port (each run has its own sink)."""
    return DeliveryResult(result.recipient, result.status, result.dsn,
                          result.reply.replace(result.relay, "RELAY"), "RELAY", result.tls)


# -- the pieces: addresses, reply parsing --------------------------------------------------------


def test_mailbox_is_parse_address_for_anything() -> None:
    alphabet = (list("abcXYZ09!#$%&'*+/=?^_`{|}~-.@") + ["ö", "日", "\x80", "\x85", "\u00a0", "\u2028", "\udc80",
                "＠", "\ufeff"] + list(" ()<>,;:\\\"[]\t\r\n\x00\x01\x7f"))
    rng = random.Random(17)
    samples = ["", "a@b", "Name <a@b.example>", " a@b ", "a@[127.0.0.1]", '"a b"@c', "a@b@c", "a..b@c", ".a@b",
               "a@b.", "jörg@exämple.de", "a\u2028@b", "a@b,c@d", "<>", "a(comment)@b"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(30_000)]
    for address in samples:
        try:
            expected: str | tuple[type, str] = parse_address(address)
        except ValueError as exc:
            expected = (type(exc), str(exc))
        try:
            got: str | tuple[type, str] = mailbox(address)
        except ValueError as exc:
            got = (type(exc), str(exc))
        assert got == expected, address


def test_replies_are_parsed_as_aiosmtplib_parses_them_however_they_are_split() -> None:
    stream = (b"250 2.1.0 Ok\r\n550-5.1.1 one\r\n550-\r\n550 5.1.1  three \r\n354 go\n"
              b"250-first\r\n250 \r\n221\r\n")
    expected = [aiosmtplib.SMTPResponse(250, "2.1.0 Ok"), aiosmtplib.SMTPResponse(550, "5.1.1 one\n\n5.1.1  three"),
                aiosmtplib.SMTPResponse(354, "go"), aiosmtplib.SMTPResponse(250, "first\n"),
                aiosmtplib.SMTPResponse(221, "")]
    protocol = SMTPProtocol.__new__(SMTPProtocol)  # only its parser: no loop, no transport
    protocol._buffer = bytearray(stream)
    assert [protocol._read_response_from_buffer() for _ in expected] == expected
    for cut in range(len(stream) + 1):
        buffer, got = bytearray(), []
        for part in (stream[:cut], stream[cut:]):
            buffer += part
            while (reply := _parse_reply(buffer)) is not None:
                got.append(reply)
        assert got == expected, cut
    with pytest.raises(aiosmtplib.SMTPResponseException, match="Malformed SMTP response line: hello"):
        _parse_reply(bytearray(b"hello\r\n"))
    with pytest.raises(aiosmtplib.SMTPResponseException, match="Response too long"):
        _parse_reply(bytearray(b"250 " + b"x" * 9000 + b"\r\n"))


async def test_gateway_to_gateway_pipelined_over_starttls_with_auth(data_dir: Path, tls_cert: tuple[Path, Path]) -> None:
    """Our own ingress offers PIPELINING: copies go to it pipelined, after STARTTLS and AUTH, and arrive
    byte for byte (behind the Received header it adds)."""
    from pipeline.accounts.secrets import hash_secret_pbkdf2
    from pipeline.app.harness import ingress_test_config, running_ingress, spooled

    key = {"name": "key", "kind": "apikey", "secret_hash": hash_secret_pbkdf2("key-0123456789", 1000)}
    config = ingress_test_config(data_dir, tls_cert, credentials=[key])
    bodies = [MSG, DOTTED, "Subject: ü\r\n\r\nGrüße\r\n".encode()]
    async with running_ingress(config) as (_, ingress):
        port = ingress.port("starttls")
        egress = SmtpEgress(EgressSection(type="smtp", host="127.0.0.1", port=port, tls="starttls",
                                          ca_file=tls_cert[0], username="apikey", password="key-0123456789",
                                          connections_per_hop=1), "gw2.test")
        try:
            results = await egress.deliver([_copy(f"user{i}@example.com", "app@shop.example", b)
                                            for i, b in enumerate(bodies)])
            [idle] = egress.pool._idle
            assert idle.conn.supports_extension("pipelining")
        finally:
            await egress.close()
    assert [r.status for r in results] == ["sent"] * 3, results
    assert all(r.reply.startswith("250 2.0.0 Ok: queued as") and r.tls.endswith("verified") for r in results)
    got = {m["recipients"][0]: m["data"] for m in spooled(data_dir)}
    assert got["user0@example.com"].endswith(b"\r\n" + MSG) and got["user2@example.com"].endswith(b"\r\n" + bodies[2])
    assert got["user1@example.com"].endswith(b"\r\n" + DOTTED + b"\r\n")
