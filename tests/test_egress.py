"""Egress against real SMTP sinks: STARTTLS + AUTH, reply classes, connection reuse, MX, maildir."""

from __future__ import annotations

import os
from pathlib import Path

import dns.name
import dns.resolver
import pytest

from pipeline.config import EgressSection
from pipeline.egress.base import Copy, dsn_of
from pipeline.egress.maildir import MaildirEgress
from pipeline.egress.mx import MxEgress
from pipeline.egress.null import NullEgress
from pipeline.egress.resolver import DnsPermanentError, DnsResolver, StaticResolver
from pipeline.egress.smtp import SmtpEgress
from tests.support.smtp_sink import closed_port

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


def copy(rcpt: str = "b@example.net", data: bytes = MSG) -> Copy:
    return Copy("Q1", rcpt, "a@example.org", data)


async def test_smarthost_delivers_over_starttls_with_auth_and_verified_certificate(sinks, tls_cert):
    controller, sink = sinks(tls=tls_cert, require_starttls=True, auth=("app", "s3cret"))
    egress = SmtpEgress(
        EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="starttls", ca_file=tls_cert[0],
                      username="app", password="s3cret"),
        "gw.test",
    )
    results = await egress.deliver([copy()])
    await egress.close()
    assert results[0].status == "sent"
    assert results[0].relay == f"127.0.0.1[127.0.0.1]:{controller.port}"
    assert sink.messages[0].tls and sink.messages[0].login == "app"
    assert sink.messages[0].data.endswith(b"hello\r\n")


async def test_smarthost_refuses_unverifiable_certificate_by_default(sinks, tls_cert):
    controller, sink = sinks(tls=tls_cert, require_starttls=True)
    egress = SmtpEgress(EgressSection(type="smtp", host="127.0.0.1", port=controller.port), "gw.test")
    [res] = await egress.deliver([copy()])
    await egress.close()
    assert res.status == "deferred" and res.dsn == "4.7.5"
    assert sink.messages == []


async def test_smarthost_wrong_password_defers_instead_of_bouncing(sinks, tls_cert):
    controller, _ = sinks(tls=tls_cert, require_starttls=True, auth=("app", "right"))
    egress = SmtpEgress(
        EgressSection(type="smtp", host="127.0.0.1", port=controller.port, ca_file=tls_cert[0], username="app",
                      password="wrong"),
        "gw.test",
    )
    [res] = await egress.deliver([copy()])
    await egress.close()
    assert res.status == "deferred" and "AUTH" in res.reply


async def test_reply_classes_map_to_sent_deferred_bounced(sinks):
    controller, sink = sinks(replies={"soft@x.test": ["450 4.2.1 mailbox busy"],
                                             "hard@x.test": ["550 5.1.1 no such user"]})
    egress = SmtpEgress(EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="none"), "gw.test")
    res = await egress.deliver([copy("ok@x.test"), copy("soft@x.test"), copy("hard@x.test")])
    await egress.close()
    assert [(r.recipient, r.status, r.dsn) for r in res] == [
        ("ok@x.test", "sent", "2.0.0"),
        ("soft@x.test", "deferred", "4.2.1"),
        ("hard@x.test", "bounced", "5.1.1"),
    ]
    assert res[2].reply == "550 5.1.1 no such user"


async def test_connection_is_reused_for_several_messages(sinks):
    controller, sink = sinks()
    section = EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="none", connections_per_hop=1)
    egress = SmtpEgress(section, "gw.test")
    for i in range(5):
        [res] = await egress.deliver([copy(f"r{i}@x.test")])
        assert res.status == "sent"
    connections = len(egress.pool._idle)
    await egress.close()
    assert len(sink.messages) == 5
    assert connections == 1


async def test_refused_connection_is_deferred():
    port = closed_port()
    egress = SmtpEgress(EgressSection(type="smtp", host="127.0.0.1", port=port, tls="none", timeout=5), "gw.test")
    [res] = await egress.deliver([copy()])
    assert res.status == "deferred" and res.dsn == "4.4.1"


async def test_mx_delivery_through_resolver_stub_with_opportunistic_starttls(sinks, tls_cert):
    controller, sink = sinks(tls=tls_cert)
    section = EgressSection(type="mx", mx_port=controller.port, tls="starttls")
    egress = MxEgress(section, "gw.test", resolver=StaticResolver(["127.0.0.1"]))
    [res] = await egress.deliver([copy("user@example.net")])
    await egress.close()
    assert res.status == "sent"
    assert sink.messages[0].tls  # self-signed, but opportunistic TLS does not verify


async def test_mx_tries_next_host_when_first_is_unreachable(sinks):
    controller, sink = sinks()
    section = EgressSection(type="mx", mx_port=controller.port, tls="none", timeout=5)
    egress = MxEgress(section, "gw.test", resolver=StaticResolver(["127.0.0.2", "127.0.0.1"]))  # nothing on .2
    [res] = await egress.deliver([copy("user@example.net")])
    await egress.close()
    assert res.status == "sent" and len(sink.messages) == 1


class _Answer(list):
    pass


class _MX:
    def __init__(self, pref: int, host: str) -> None:
        self.preference = pref
        self.exchange = dns.name.from_text(host)


class _FakeDns:
    """Stands in for the DNS (the internet): answers from a table."""

    def __init__(self, table: dict[tuple[str, str], object]) -> None:
        self.table = table
        self.lifetime = 1.0

    async def resolve(self, name: str, rdtype: str):
        result = self.table.get((name, rdtype), dns.resolver.NoAnswer())
        if isinstance(result, Exception):
            raise result
        return result


def _dns(table):
    r = DnsResolver()
    r._resolver = _FakeDns(table)
    return r


async def test_mx_records_in_preference_order():
    r = _dns({("example.net", "MX"): _Answer([_MX(20, "b.mx.example.net."), _MX(10, "a.mx.example.net.")])})
    assert await r.mx_hosts("example.net") == ["a.mx.example.net", "b.mx.example.net"]


async def test_null_mx_is_permanent_failure():
    r = _dns({("nomail.example", "MX"): _Answer([_MX(0, ".")])})
    with pytest.raises(DnsPermanentError) as exc:
        await r.mx_hosts("nomail.example")
    assert exc.value.dsn == "5.1.10"
    egress = MxEgress(EgressSection(type="mx"), "gw.test", resolver=r)
    [res] = await egress.deliver([copy("x@nomail.example")])
    assert res.status == "bounced" and res.dsn == "5.1.10"


async def test_implicit_mx_from_address_record_and_nxdomain_bounces():
    r = _dns({("plain.example", "A"): _Answer(["192.0.2.1"]), ("gone.example", "MX"): dns.resolver.NXDOMAIN()})
    assert await r.mx_hosts("plain.example") == ["plain.example"]
    with pytest.raises(DnsPermanentError):
        await r.mx_hosts("gone.example")


async def test_dns_timeout_defers():
    r = _dns({("slow.example", "MX"): dns.exception.Timeout()})
    egress = MxEgress(EgressSection(type="mx"), "gw.test", resolver=r)
    [res] = await egress.deliver([copy("x@slow.example")])
    assert res.status == "deferred" and res.dsn == "4.4.3"


async def test_maildir_uses_tmp_then_new_and_keeps_bytes(tmp_path: Path):
    egress = MaildirEgress(tmp_path / "md")
    [res] = await egress.deliver([copy()])
    assert res.status == "sent"
    files = os.listdir(tmp_path / "md" / "new")
    assert len(files) == 1 and os.listdir(tmp_path / "md" / "tmp") == []
    content = (tmp_path / "md" / "new" / files[0]).read_bytes()
    assert content.startswith(b"Return-Path: <a@example.org>\r\nDelivered-To: b@example.net\r\n")
    assert content.endswith(MSG)


async def test_maildir_write_failure_defers(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    [res] = await MaildirEgress(blocker / "md").deliver([copy()])
    assert res.status == "deferred"


async def test_null_egress_accepts_everything():
    res = await NullEgress().deliver([copy("a@x"), copy("b@x")])
    assert [r.status for r in res] == ["sent", "sent"]


def test_dsn_taken_from_reply_or_generic():
    assert dsn_of(550, "5.1.1 unknown user") == "5.1.1"
    assert dsn_of(550, "unknown user") == "5.0.0"
    assert dsn_of(451, "5.1.1 inconsistent") == "4.0.0"
