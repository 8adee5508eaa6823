"""Replies to pipelined MAIL, RCPT and RSET commands go out with the next reply, in one write
(RFC 2920 3.1), and the client gets exactly the octets it got with one write per reply.

* generated dialogues (commands from a pool, pipelined in batches of random size, refusals and
  accepted transactions, DATA with its message) get the same octets from the session as from one
  that writes every reply at once, over real sockets;
* a pipelined transaction (MAIL, three RCPT, DATA) is answered in one write, and a client that
  waits for each reply gets each one before it sends the next command (nothing is held for it).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

import pytest

from pipeline.app.harness import ingress_test_config, running_ingress
from pipeline.ingress.server import GatewaySMTP


class OneWritePerReply(GatewaySMTP):
    """The session as it was: every reply written as soon as it is made."""

    grouped_replies: ClassVar[frozenset[str]] = frozenset()


class CountingWrites(GatewaySMTP):
    """Records every write of the session's stream writer (one entry per write)."""

    writes: ClassVar[list[bytes]] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        writer = self._writer
        write = writer.write

        def counted(data: bytes) -> None:
            CountingWrites.writes.append(bytes(data))
            write(data)

        writer.write = counted  # type: ignore[method-assign]


MESSAGE = b"From: <a@example.com>\r\nTo: <b@example.net>\r\nSubject: hi\r\n\r\nhello\r\n.line\r\n"

POOL = [
    b"MAIL FROM:<a@example.com>",
    b"MAIL FROM:<a@example.com> BODY=8BITMIME",
    b"MAIL FROM:<>",
    b"MAIL FROM:<bad",
    b"MAIL TO:<a@example.com>",
    b"RCPT TO:<b@example.net>",
    b"RCPT TO:<c@example.net>",
    b"RCPT TO:<d@elsewhere.test>",
    b"RCPT TO:<bad",
    b"RCPT TO:<b%c@example.net>",
    b"RSET",
    b"RSET x",
    b"NOOP",
    b"VRFY b",
    b"DATA",
    b"FOO",
    b"",
]


async def transcript(port: int, batches: list[list[bytes]]) -> list[bytes]:
    """Every line the server sends: the greeting, EHLO's, then each batch of command lines sent in one
    write and all their replies read (a 354 is followed by the message), then QUIT's and the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: list[bytes] = []

    async def reply() -> bytes:
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            assert line, f"closed early: {out}"
            out.append(line)
            if line[3:4] != b"-":
                return line

    try:
        await reply()
        writer.write(b"EHLO client.test\r\n")
        await reply()
        for batch in batches:
            writer.write(b"".join(line + b"\r\n" for line in batch))
            await writer.drain()
            for _ in batch:
                last = await reply()
            if last.startswith(b"354"):
                writer.write(MESSAGE + b".\r\n")
                await reply()
        writer.write(b"QUIT\r\n")
        await reply()
        out.append(await asyncio.wait_for(reader.read(), 10) or b"<closed>")
    finally:
        writer.close()
    return out


def generated_dialogues(seed: int, count: int) -> list[list[list[bytes]]]:
    """Dialogues of pipelined batches; DATA only ends a batch (after a 354 the next lines are the
    message), and fewer than five unknown commands (the fifth closes the connection)."""
    rng = random.Random(seed)
    dialogues = []
    for _ in range(count):
        batches: list[list[bytes]] = []
        unknown = 0
        for _ in range(rng.randint(1, 5)):
            batch: list[bytes] = []
            for _ in range(rng.randint(1, 7)):
                line = rng.choice(POOL)
                if line in (b"FOO", b""):
                    if unknown >= 3:
                        continue
                    unknown += 1
                batch.append(line)
                if line == b"DATA":
                    break
            if batch:
                batches.append(batch)
        dialogues.append(batches)
    dialogues.append(
        [
            [b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>", b"RCPT TO:<c@example.net>", b"DATA"],
            [b"RSET", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>", b"DATA"],
        ]
    )
    return dialogues


@pytest.mark.parametrize("local", [True, False], ids=["transactions accepted", "relay refused"])
async def test_pipelined_dialogues_get_the_same_octets_as_with_one_write_per_reply(
    local, data_dir, monkeypatch
):
    relay = {"local_domains": ["example.net"]} if local else {}
    config = ingress_test_config(data_dir, relay=relay)
    dialogues = generated_dialogues(seed=17 if local else 23, count=25)
    async with running_ingress(config) as (_, ingress):
        ours = [await transcript(ingress.port("plain"), d) for d in dialogues]
    monkeypatch.setattr("pipeline.ingress.service.GatewaySMTP", OneWritePerReply)
    config = ingress_test_config(data_dir.with_name("data2"), relay=relay)
    async with running_ingress(config) as (_, ingress):
        theirs = [await transcript(ingress.port("plain"), d) for d in dialogues]
    for dialogue, a, b in zip(dialogues, ours, theirs, strict=True):
        # (queue ids differ between runs; everything else must not)
        assert [strip_queue_id(x) for x in a] == [strip_queue_id(x) for x in b], dialogue
    if local:
        assert any(b"queued as" in line for lines in ours for line in lines)
    assert any(line.startswith((b"5", b"4")) for lines in ours for line in lines)


def strip_queue_id(line: bytes) -> bytes:
    return line.split(b"queued as ")[0]


async def test_a_pipelined_transaction_is_answered_in_one_write(data_dir, monkeypatch):
    monkeypatch.setattr("pipeline.ingress.service.GatewaySMTP", CountingWrites)
    CountingWrites.writes.clear()
    config = ingress_test_config(data_dir, relay={"local_domains": ["example.net"]})
    async with running_ingress(config) as (_, ingress):
        reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port("plain"))
        await reader.readline()
        writer.write(b"EHLO client.test\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        before = len(CountingWrites.writes)
        writer.write(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<x@elsewhere.test>\r\n"
            b"RCPT TO:<c@example.net>\r\nDATA\r\n"
        )
        replies = [await reader.readline() for _ in range(5)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"530", b"250", b"354"]
        assert CountingWrites.writes[before:] == [b"".join(replies)]  # one write for the five
        # a client that waits for each reply: each is written (and arrives) before the next command
        writer.write(MESSAGE + b".\r\n")
        assert (await reader.readline()).startswith(b"250 2.0.0 Ok: queued as ")
        for command, code in (
            (b"RSET", b"250"),
            (b"MAIL FROM:<a@example.com>", b"250"),
            (b"RCPT TO:<b@example.net>", b"250"),
            (b"RSET", b"250"),
        ):
            writer.write(command + b"\r\n")
            assert (await asyncio.wait_for(reader.readline(), 10))[:3] == code
        writer.write(b"QUIT\r\n")
        assert (await reader.readline()).startswith(b"221")
        writer.close()
    assert all(w.count(b"\r\n") == 1 for w in CountingWrites.writes[before + 1 :])
