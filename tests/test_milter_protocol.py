"""The milter at protocol level, against an independent MTA-side client (tests/support/milter_client.py):
negotiation, macros, verdicts as replies, edits as actions, the fail policy, hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from pipeline import Discard, Plugin, Reject, TempFail, hookimpl
from pipeline.chain.driver import make_config
from pipeline.chain.loader import PluginSet
from pipeline.chain.runner import Chain
from pipeline.milter.service import MilterService
from tests.support import SAMPLES, complete_message
from tests.support.milter_client import MilterClient, apply, dkim_key

SEEN: dict[str, Any] = {}


class Recorder(Plugin):
    """Records what the hooks see; refuses what the test names."""

    name = "recorder"

    @hookimpl
    def on_connect(self, session):
        SEEN["connect"] = session.peer

    @hookimpl
    def on_mail_from(self, session, transaction, address):
        SEEN.update(
            mail=address,
            credential=session.credential.name if session.credential else None,
            tls=session.tls,
            cipher=session.notes.get("cipher"),
            mta_id=transaction.notes.get("mta_queue_id"),
            options=list(transaction.mail_options),
        )

    @hookimpl
    def on_rcpt_to(self, address):
        if address.startswith("nobody@"):
            return Reject(550, "5.1.1", "No such user here")
        if address.startswith("later@"):
            return TempFail(450, "4.2.0", "Mailbox busy")
        if address.startswith("drop@"):
            return Discard("not wanted")
        return None

    @hookimpl
    def on_message(self, ctx):
        SEEN["ctx_recipient_phase"] = list(ctx.message.rcpt_tos)
        subject = ctx.message.get("Subject") or ""
        if subject == "discard me":
            return Discard("test")
        if subject == "boom":
            raise RuntimeError("plugin bug")
        if subject == "slow":
            return _sleep()
        return None

    @hookimpl
    def on_personalize(self, ctx):
        SEEN["recipient"] = ctx.recipient
        if ctx.message.get("Subject") == "envelope":
            ctx.message.change_sender("bounces@example.com")
            ctx.message.add_recipient("added@example.org")
            ctx.message.remove_recipient("b@example.org")


async def _sleep() -> None:
    await asyncio.sleep(5)


async def start(
    tmp_path: Path,
    chain_plugins: list[str],
    extra: list[Any] | None = None,
    listen: str = "inet:127.0.0.1:0",
    **overrides: Any,
) -> MilterService:
    cfg = {"gateway": {"data_dir": str(tmp_path / "data")}, **overrides}
    config = make_config(cfg, plugins=chain_plugins)
    service = MilterService(config, Chain(PluginSet(config, extra or [])), [listen])
    await service.start()
    return service


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    chain_plugins: list[str],
    extra: list[Any] | None = None,
    listen: str = "inet:127.0.0.1:0",
    **overrides: Any,
) -> AsyncIterator[MilterService]:
    service = await start(tmp_path, chain_plugins, extra, listen, **overrides)
    try:
        yield service
    finally:
        await service.stop(0)


async def client(service: MilterService) -> MilterClient:
    ep = service.bound[0]
    return await (MilterClient.unix(ep.path) if ep.kind == "unix" else MilterClient.tcp(ep.host, ep.port))


async def envelope(c: MilterClient, *rcpts: str, **mail_macros: str) -> None:
    await c.negotiate()
    await c.connect()
    await c.helo()
    await c.mail("sender@example.com", **mail_macros)
    for r in rcpts or ("a@example.org",):
        await c.rcpt(r)


async def test_negotiation_asks_for_no_step_and_no_reply_the_chain_does_not_use(tmp_path):
    async with running(tmp_path, ["css_inline"]) as service:
        c = await client(service)
        neg = await c.negotiate()
        assert neg.version == 6
        # no DATA, end-of-header or unknown-command events; no reply per header, body chunk, connect, HELO,
        # MAIL or RCPT (no plugin has those hooks); header values with their leading space
        for bit in (0x200, 0x40, 0x100, 0x80, 0x80000, 0x1000, 0x2000, 0x4000, 0x8000, 0x100000):
            assert neg.steps & bit, hex(bit)
        assert not neg.steps & (0x10 | 0x20)  # body and headers are wanted
        assert neg.actions == 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x100
        assert (
            "{auth_authen}" in neg.macros[2]
            and "{client_addr}" in neg.macros[0]
            and "{tls_version}" in neg.macros[1]
        )
        await c.close()
        c = await client(service)
        neg = await c.negotiate(
            actions=0x01, steps=0x3F
        )  # an older MTA: offers only add-headers and v2 steps
        assert neg.actions == 0x01 and neg.steps & ~0x3F == 0 and 2 not in neg.macros
        await c.close()


async def test_rcpt_hook_gets_replies_and_the_plugins_smtp_reply(tmp_path):
    async with running(tmp_path, [], [Recorder]) as service:
        c = await client(service)
        neg = await c.negotiate()
        assert not neg.steps & 0x8000  # on_rcpt_to exists: RCPT gets a reply
        assert await c.connect() == [(b"c", b"")]
        await c.helo()
        assert await c.mail("sender@example.com") == [(b"c", b"")]
        assert await c.rcpt("nobody@example.org") == [(b"y", b"550 5.1.1 No such user here\x00")]
        assert await c.rcpt("later@example.org") == [(b"y", b"450 4.2.0 Mailbox busy\x00")]
        assert await c.rcpt("a@example.org") == [(b"c", b"")]
        await c.close()


async def test_macros_become_the_session_credential_tls_and_mta_queue_id(tmp_path):
    creds = [{"name": "shop", "kind": "password", "username": "shop-user", "secret": "x" * 20}]
    async with running(tmp_path, [], [Recorder], credentials=creds) as service:
        c = await client(service)
        await c.negotiate()
        await c.connect(addr="192.0.2.99", port=51234, macro_addr="198.51.100.7")  # the macro wins
        await c.helo(tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")
        await c.mail("sender@example.com", "BODY=8BITMIME", auth_authen="shop-user", auth_type="PLAIN")
        assert SEEN["connect"] == ("198.51.100.7", 51234)
        assert (
            SEEN["credential"] == "shop"
            and SEEN["tls"] is True
            and SEEN["cipher"] == "TLS_AES_256_GCM_SHA384"
        )
        assert SEEN["mta_id"] == "QID1" and SEEN["options"] == ["BODY=8BITMIME"]
        await c.mail("sender@example.com", auth_authen="someone-else")
        assert (
            SEEN["credential"] == "someone-else"
        )  # authenticated by the MTA, unknown here: default switches
        await c.close()


@pytest.mark.parametrize("workers", [0, 1])
async def test_full_chain_inlines_tracks_and_signs_the_bytes_the_mta_will_have(tmp_path, workers):
    key, dns = dkim_key(tmp_path)
    plugins = {"dkim_sign": {"domains": {"example.com": {"selector": "s1", "key_file": key}}}}
    chain = ["header_validation", "campaign_tag", "css_inline", "click_tracking", "open_pixel", "dkim_sign"]
    async with running(tmp_path, chain, plugins=plugins, milter={"workers": workers}) as service:
        assert (service.pool is not None) == bool(workers)
        raw = (
            (SAMPLES / "02-newsletter-alternative.eml")
            .read_bytes()
            .replace(b"\n", b"\r\n")
            .replace(b"\r\r\n", b"\r\n")
        )
        c = await client(service)
        await envelope(c, "reader@example.org")
        replies = await c.message(raw)
        assert replies[-1] == (b"c", b"")
        kinds = {cmd for cmd, _ in replies}
        assert b"i" in kinds and b"b" in kinds  # the signature on top, the rewritten body
        final, env = apply(raw, replies[:-1])
        assert final.startswith(b"DKIM-Signature:")
        assert dkim.verify(final, dnsfunc=lambda name, timeout=5: dns.get(name, b""))
        assert b"<style" not in final.split(b"\r\n\r\n", 1)[1] or b"style=" in final
        assert b"/c/" in final and b"/o/" in final  # tracked links and the pixel
        assert env == {"from": [], "add": [], "del": []}
        await c.close()


async def test_one_recipient_gets_its_own_tokens_several_get_the_per_message_form(tmp_path):
    async with running(tmp_path, [], [Recorder]) as service:
        c = await client(service)
        await envelope(c, "a@example.org")
        await c.message(complete_message())
        assert SEEN["recipient"] == "a@example.org"
        await c.mail("sender@example.com")
        await c.rcpt("a@example.org")
        await c.rcpt("b@example.org")
        await c.message(complete_message())
        assert SEEN["recipient"] is None
        await c.close()


async def test_envelope_edits_and_rcpt_discards_become_chgfrom_addrcpt_delrcpt(tmp_path):
    async with running(tmp_path, [], [Recorder]) as service:
        c = await client(service)
        await envelope(c, "a@example.org", "b@example.org", "drop@example.org")
        replies = await c.message(complete_message(subject="envelope"))
        _, env = apply(complete_message(), replies[:-1])
        assert env == {
            "from": ["bounces@example.com"],
            "add": ["added@example.org"],
            "del": ["b@example.org", "drop@example.org"],
        }
        assert SEEN["ctx_recipient_phase"] == ["a@example.org", "b@example.org"]
        await c.close()


async def test_discard_verdict_becomes_smfir_discard(tmp_path):
    async with running(tmp_path, [], [Recorder]) as service:
        c = await client(service)
        await envelope(c)
        assert await c.message(complete_message(subject="discard me")) == [(b"d", b"")]
        await c.close()


@pytest.mark.parametrize(
    ("subject", "milter", "expected"),
    [
        ("boom", {}, [(b"y", b"451 4.3.0 Temporary local problem, try again later\x00")]),
        ("slow", {}, [(b"y", b"451 4.3.0 Temporary local problem, try again later\x00")]),
        ("boom", {"on_error": "accept"}, [(b"a", b"")]),
        ("slow", {"on_timeout": "accept", "on_error": "reject"}, [(b"a", b"")]),
        ("boom", {"on_error": "reject"}, [(b"y", b"550 5.3.0 Local problem, message refused\x00")]),
    ],
)
async def test_fail_policy_tempfails_a_plugin_error_or_timeout_unless_told_otherwise(
    tmp_path, subject, milter, expected, caplog
):
    async with running(tmp_path, [], [Recorder], milter=milter, chain={"timeout": 0.3}) as service:
        c = await client(service)
        await envelope(c)
        with caplog.at_level(logging.ERROR, "smtpgate"):
            assert await c.message(complete_message(subject=subject)) == expected
        assert "plugin recorder" in caplog.text
        await c.close()


async def test_malformed_packet_gets_tempfail_and_a_log_line_and_the_server_goes_on(tmp_path, caplog):
    async with running(tmp_path, ["css_inline"]) as service:
        c = await client(service)
        await c.negotiate()
        with caplog.at_level(logging.ERROR, "smtpgate.milter"):
            await c.send(b"C", b"host-without-terminator")
            assert await c.read() == (b"t", b"")
            assert await c.eof()
        assert "protocol error in SMFIC_CONNECT: SMFIC_CONNECT: no address family" in caplog.text
        c2 = await client(service)
        await c2.send(b"M", b"<a@b>\x00")  # before negotiation
        assert await c2.read() == (b"t", b"")
        assert await c2.eof()
        c3 = await client(service)
        await envelope(c3)
        assert (await c3.message(complete_message()))[-1] == (b"c", b"")
        await c3.close()


async def test_oversized_packet_ends_the_connection_without_reading_it(tmp_path, caplog):
    async with running(tmp_path, ["css_inline"]) as service:
        c = await client(service)
        await c.negotiate()
        with caplog.at_level(logging.ERROR, "smtpgate.milter"):
            c.writer.write(struct.pack(">L", 2**31) + b"B" + b"x" * 100)
            await c.writer.drain()
            assert await c.eof(timeout=5)
        assert "packet of 2147483648 bytes exceeds the limit of 1048576 bytes" in caplog.text


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_mta_disappearing_mid_body_is_logged_and_leaves_nothing_behind(tmp_path, caplog):
    async with running(tmp_path, ["css_inline"]) as service:
        warm = await client(service)
        await envelope(warm)
        await warm.close()
        await asyncio.sleep(0)
        before = _open_fds()
        with caplog.at_level(logging.WARNING, "smtpgate.milter"):
            for _ in range(20):
                c = await client(service)
                await envelope(c)
                await c.event(b"L", b"Subject\x00 hi\x00", 0x80)
                await c.send(b"B", b"part of the body\r\n" * 100)
                c.writer.transport.abort()  # gone, mid-body, no QUIT
            server = service.server
            assert server is not None
            for _ in range(200):
                if not server.connections:
                    break
                await asyncio.sleep(0.01)
        assert not server.connections
        assert caplog.text.count("disconnected mid-message") == 20
        assert _open_fds() <= before
        c = await client(service)
        await envelope(c)
        assert (await c.message(complete_message()))[-1] == (b"c", b"")
        await c.close()


async def test_unix_socket_serves_the_same_protocol(tmp_path):
    path = tmp_path / "milter.sock"
    async with running(tmp_path, [], [Recorder], listen=f"unix:{path}") as service:
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        c = await client(service)
        await envelope(c)
        assert await c.message(complete_message(subject="discard me")) == [(b"d", b"")]
        await c.close()
    assert not path.exists()


async def test_ip_allow_list_credential_applies_without_auth(tmp_path):
    creds = [{"name": "office", "kind": "ip", "networks": ["198.51.100.0/24"]}]
    async with running(tmp_path, [], [Recorder], credentials=creds) as service:
        c = await client(service)
        await c.negotiate()
        await c.connect(addr="198.51.100.7")
        await c.helo()
        await c.mail("sender@example.com")
        assert SEEN["credential"] == "office" and SEEN["tls"] is False
        await c.close()


async def test_message_over_the_size_limit_gets_552_and_is_not_kept(tmp_path):
    async with running(tmp_path, ["css_inline"], limits={"max_message_size": 2000}) as service:
        c = await client(service)
        await envelope(c)
        replies = await c.message(complete_message(body=("x" * 70 + "\r\n") * 100))
        assert replies == [(b"y", b"552 5.3.4 Message size exceeds fixed maximum message size\x00")]
        await c.mail("sender@example.com")  # the connection goes on with the next message
        await c.rcpt("a@example.org")
        assert (await c.message(complete_message()))[-1] == (b"c", b"")
        await c.close()
