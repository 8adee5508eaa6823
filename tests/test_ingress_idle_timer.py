"""The idle timeout is the client's time, not the server's: while a message is admitted and
spooled the timer stands still, and it starts again once the reply is out (Postfix's
``smtpd_timeout`` counts the same way). Real sockets, a real spool."""

from __future__ import annotations

import asyncio
import time

from pipeline import MessageContext, Plugin, hookimpl
from pipeline.app.harness import Dialogue, ingress_test_config, running_ingress, spooled

IDLE = 0.4
SLOW = 1.0  # admission takes longer than the whole idle timeout


class SlowAdmission(Plugin):
    """An admission hook that takes SLOW seconds (a milter-like check, a loaded machine)."""

    name = "slow_admission"

    @hookimpl
    async def on_message(self, ctx: MessageContext) -> None:
        await asyncio.sleep(SLOW)


MESSAGE = "From: a@example.com\r\nTo: r@local.test\r\nSubject: slow\r\n\r\nbody\r\n."


def config(data_dir):
    return ingress_test_config(
        data_dir, credentials=[{"name": "office", "kind": "ip", "networks": ["127.0.0.0/8"]}],
        limits={"idle_timeout": IDLE},
    )


async def test_a_slow_admission_is_answered_250_and_the_client_keeps_its_whole_idle_time(data_dir):
    async with running_ingress(config(data_dir), [SlowAdmission]) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        await d.reply()
        assert (await d.cmd("EHLO client.test")).code == 250
        assert (await d.cmd("MAIL FROM:<a@example.com>")).code == 250
        assert (await d.cmd("RCPT TO:<r@example.net>")).code == 250
        assert (await d.cmd("DATA")).code == 354
        r = await d.cmd(MESSAGE)
        assert r.code == 250, r  # not 421 while its message was being queued
        assert len(spooled(data_dir)) == 1
        await asyncio.sleep(IDLE / 2)  # less than the idle timeout, counted from the reply
        assert (await d.cmd("NOOP")).code == 250
        assert (await d.cmd("QUIT")).code == 221
        await d.close()


async def test_a_client_that_stalls_after_the_reply_is_still_cut_by_the_idle_timeout(data_dir):
    async with running_ingress(config(data_dir), [SlowAdmission]) as (_, ingress):
        d = await Dialogue.connect("127.0.0.1", ingress.port("plain"))
        await d.reply()
        await d.cmd("EHLO client.test")
        await d.cmd("MAIL FROM:<a@example.com>")
        await d.cmd("RCPT TO:<r@example.net>")
        await d.cmd("DATA")
        assert (await d.cmd(MESSAGE)).code == 250
        replied = time.monotonic()
        r = await d.reply()  # nothing sent: the server speaks first, when the client's time is up
        assert r.code == 421, r
        assert time.monotonic() - replied >= IDLE * 0.9
        await d.close()
