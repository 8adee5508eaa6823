"""SMTP egress writes the DATA phase itself: the prepared wire form is byte for byte what aiosmtplib would
send, copies arrive identical with SIZE, and a failed or closing connection is never reused."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import corpus_files, sample_files

FILES = sample_files() + corpus_files()  # every golden input: samples/ and the shared corpus

# -- SMTP egress: prepared DATA without aiosmtplib's regex passes -------------------------------


WIRE_EDGE = [
    b"",
    b"a",
    b"\r\n",
    b".\r\n",
    b"..\r\n.\r\n",
    b"Subject: x\r\n\r\n.hidden\r\n..two\r\n. \r\nend",
    b"Subject: x\r\n\r\nbody\r\n",
]


def test_wire_data_is_byte_for_byte_what_aiosmtplib_would_send() -> None:
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from pipeline.egress.smtp import wire_data

    crlf_files = [p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for p in FILES]
    checked = 0
    for data in WIRE_EDGE + crlf_files + [b"." + d for d in crlf_files[:5]]:
        expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
        assert wire_data(data) == expected, data[:80]
        checked += 1
    assert checked > 20
    for bare in (b"a\nb\r\n", b"a\rb\r\n", b"a\r\n\n", b"\r", b"x\n.\r\n"):
        assert wire_data(bare) is None, bare  # not CRLF-clean: aiosmtplib's own path


class _OptionSink:
    """SinkHandler that also keeps MAIL parameters and refuses DATA for ``reject-data@`` recipients."""

    def __init__(self) -> None:
        from tests.support.smtp_sink import SinkHandler

        self.inner = SinkHandler(replies={"refused@example.net": ["550 5.1.1 no such user"]})
        self.mail_options: list[list[str]] = []

    async def handle_RCPT(self, *args: object) -> str:
        return await self.inner.handle_RCPT(*args)  # type: ignore[arg-type]

    async def handle_RSET(self, *args: object) -> str:
        return await self.inner.handle_RSET(*args)  # type: ignore[arg-type]

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.mail_options.append(list(envelope.mail_options))  # type: ignore[attr-defined]
        if any(r.startswith("reject-data@") for r in envelope.rcpt_tos):  # type: ignore[attr-defined]
            return "554 5.7.1 content refused"
        return await self.inner.handle_DATA(server, session, envelope)  # type: ignore[arg-type]


async def test_prepared_copies_arrive_byte_identical_with_size_and_refusals_reset_the_reused_connection() -> None:
    from pipeline.egress.base import Copy
    from pipeline.egress.smtp import HopPool, open_connection, send_copy
    from tests.support.smtp_sink import SinkController

    handler = _OptionSink()
    sink = SinkController(handler, data_size_limit=10_000_000)  # advertises SIZE, like Postfix
    sink.start()
    opened: list[object] = []

    async def connect() -> object:
        conn = await open_connection("127.0.0.1", sink.port, helo="gw.test", timeout=10, tls="none",
                                     verify=False, ca_file=None)
        opened.append(conn)
        return conn

    pool = HopPool("127.0.0.1", sink.port, 1, connect)  # type: ignore[arg-type]
    try:
        typical = FILES[0].read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        dotted = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast line without CRLF"
        sent = [
            await send_copy(pool, Copy("q1", "a@example.net", "s@example.com", typical)),
            await send_copy(pool, Copy("q2", "refused@example.net", "s@example.com", dotted)),
            await send_copy(pool, Copy("q3", "reject-data@example.net", "s@example.com", dotted)),
            await send_copy(pool, Copy("q4", "b@example.net", "s@example.com", dotted)),
            await send_copy(pool, Copy("q5", "c@example.net", "s@example.com", b"Subject: bare\n\nLF only\n")),
        ]
    finally:
        await pool.close()
        sink.stop()
    assert [r.status for r in sent] == ["sent", "bounced", "bounced", "sent", "sent"]
    assert sent[1].dsn == "5.1.1" and sent[2].reply.startswith("554") and "5.7.1" in sent[2].reply
    assert handler.inner.commands.count("RSET") == 2  # after the refused RCPT and the refused DATA
    assert len(opened) == 1  # one connection for all five: refusals leave it usable
    got = handler.inner.messages
    assert [m.rcpt_tos for m in got] == [["a@example.net"], ["b@example.net"], ["c@example.net"]]
    assert got[0].data == typical
    assert got[1].data == dotted + b"\r\n"  # the last line gets its CRLF, the dots come back unstuffed
    assert got[2].data == b"Subject: bare\r\n\r\nLF only\r\n"  # bare LF: aiosmtplib's own path normalises
    sizes = [o for opts in handler.mail_options for o in opts if o.upper().startswith("SIZE=")]
    assert sizes[:3] == [f"SIZE={len(typical)}", f"SIZE={len(dotted) + 2}", f"SIZE={len(dotted) + 2}"]


async def _scripted_hop(data_reply: bytes | None) -> tuple[asyncio.Server, int, list[int]]:
    """A next hop that accepts MAIL and RCPT, then after the message answers ``data_reply``, or
    (``None``) hangs up in the middle of the DATA bytes. Counts connections."""
    connections: list[int] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.write(b"220 hop ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-hop\r\n250-SIZE 10000000\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    if data_reply is None:
                        await reader.read(100)
                        writer.close()
                        return
                    await reader.readuntil(b"\r\n.\r\n")
                    writer.write(data_reply)
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


@pytest.mark.parametrize(
    ("data_reply", "status", "dsn"),
    [(None, "deferred", "4.4.2"), (b"421 4.3.2 shutting down\r\n", "deferred", "4.3.2"),
     (b"452 4.3.1 out of space\r\n", "deferred", "4.3.1")],
)
async def test_prepared_data_phase_failures_defer_and_a_dead_or_closing_connection_is_not_reused(
    data_reply: bytes | None, status: str, dsn: str
) -> None:
    from pipeline.egress.base import Copy
    from pipeline.egress.smtp import HopPool, open_connection, send_copy

    server, port, connections = await _scripted_hop(data_reply)

    async def connect() -> object:
        return await open_connection("127.0.0.1", port, helo="gw.test", timeout=5, tls="none",
                                     verify=False, ca_file=None)

    pool = HopPool("127.0.0.1", port, 1, connect)  # type: ignore[arg-type]
    copy = Copy("q1", "a@example.net", "s@example.com", b"Subject: x\r\n\r\nbody\r\n")
    try:
        first = await send_copy(pool, copy)
        second = await send_copy(pool, copy)
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
    assert (first.status, first.dsn) == (status, dsn), first
    assert second.status == status
    # a hang-up or a 421 means a fresh connection for the next copy; a plain 4xx keeps it
    assert len(connections) == (1 if data_reply and data_reply.startswith(b"452") else 2)
