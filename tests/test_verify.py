"""``verify`` against a real SMTP server reached through a resolver stub: never DATA, four answers."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import pipeline.app.cli.verify as verify_cli
from pipeline.app.cli import main
from pipeline.app.verify import verify_address
from pipeline.egress.resolver import DnsPermanentError, StaticResolver
from tests.support.smtp_sink import closed_port, start_sink


@pytest.fixture
def sink():
    controller, handler = start_sink(known={"alice@example.net"},
                                     replies={"busy@example.net": ["450 4.2.1 mailbox busy"]})
    yield controller, handler
    controller.stop()


@pytest.fixture
def catch_all():
    controller, handler = start_sink()
    yield controller, handler
    controller.stop()


STUB = StaticResolver(["127.0.0.1"])


async def test_existing_mailbox_is_deliverable_and_no_data_is_sent(sink):
    controller, handler = sink
    r = await verify_address("alice@example.net", resolver=STUB, port=controller.port)
    assert r.status == "deliverable" and r.reply.startswith("250")
    assert r.mx == f"127.0.0.1[127.0.0.1]:{controller.port}"
    assert handler.messages == []  # DATA never sent
    assert "RSET" in handler.commands
    assert len(handler.rcpt_log) == 2  # the address, then a random probe for catch-all


async def test_unknown_mailbox_is_undeliverable_with_reply(sink):
    controller, handler = sink
    r = await verify_address("bob@example.net", resolver=STUB, port=controller.port)
    assert r.status == "undeliverable" and r.reply.startswith("550 5.1.1")
    assert handler.messages == []


async def test_4xx_is_unknown(sink):
    controller, _ = sink
    r = await verify_address("busy@example.net", resolver=STUB, port=controller.port)
    assert r.status == "unknown" and r.reply.startswith("450")


async def test_server_accepting_random_local_part_is_catch_all(catch_all):
    controller, handler = catch_all
    r = await verify_address("anyone@example.net", resolver=STUB, port=controller.port)
    assert r.status == "catch-all"
    assert handler.messages == []


async def test_unreachable_server_is_unknown():
    port = closed_port()
    r = await verify_address("x@example.net", resolver=STUB, port=port, timeout=5)
    assert r.status == "unknown"


async def test_null_mx_and_bad_syntax_are_undeliverable():
    class NullMx:
        async def mx_hosts(self, domain):
            raise DnsPermanentError("5.1.10", f"Domain {domain} does not accept mail (null MX)")

    r = await verify_address("x@nomail.example", resolver=NullMx())
    assert r.status == "undeliverable" and "null MX" in r.reply
    r = await verify_address("not-an-address", resolver=STUB)
    assert r.status == "undeliverable"


def test_cli_reports_each_address_and_exit_status(sink, monkeypatch, data_dir):
    controller, _ = sink
    monkeypatch.setattr(verify_cli, "make_resolver", lambda timeout: STUB)  # DNS is the internet
    result = CliRunner().invoke(
        main, ["verify", "--port", str(controller.port), "alice@example.net", "bob@example.net"]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("alice@example.net: deliverable (250")
    assert lines[1].startswith("bob@example.net: undeliverable (550 5.1.1")
    ok = CliRunner().invoke(main, ["verify", "--json", "--port", str(controller.port), "alice@example.net"])
    assert ok.exit_code == 0 and '"status": "deliverable"' in ok.output
