"""The one accept step (pipeline/chain/accept.py): admission -> inbound sinks -> spool -> ``accepted``
events, against a real SQLite spool and a recording event sink (a real implementation of the port)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from pipeline import Event, Plugin, Reject, hookimpl
from pipeline.chain.accept import AcceptStep, enqueue
from pipeline.chain.driver import make_chain, make_config
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.spool.sqlite import SqliteSpool

RAW = b"From: app@shop.example\r\nTo: a@example.net\r\nSubject: hi\r\nX-Campaign-Id: spring\r\n\r\nhello\r\n"


class Events:
    """An EventSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event, *, strict: bool = False) -> None:
        self.events.append(event)


class RefuseSpam(Plugin):
    name = "refuse_spam"

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        return Reject(550, "5.7.1", "spam") if b"spam" in ctx.message.as_bytes() else None


def step(tmp_path: Path, **relay: list[str]) -> tuple[AcceptStep, SqliteSpool, Events, Counter[str]]:
    config = make_config({"gateway": {"data_dir": str(tmp_path)}, "relay": relay}, plugins=["campaign_tag"])
    spool, events, metrics = SqliteSpool(tmp_path / "spool.db"), Events(), Counter[str]()
    return AcceptStep(config, make_chain(config, [RefuseSpam]), spool, events, metrics=metrics), spool, events, metrics


async def test_a_queued_message_is_durable_before_its_accepted_events_are_announced(tmp_path):
    accept, spool, events, metrics = step(tmp_path)
    outcome = await accept.accept(RAW, "app@shop.example", ["a@example.net", "b@example.net"], queue_id="q1")
    assert (outcome.status, outcome.queue_id, outcome.recipients) == ("queued", "q1", ["a@example.net", "b@example.net"])
    assert spool.show("q1") is not None
    assert events.events == []  # the client is answered first
    await accept.announce(outcome)
    assert [(e.type, e.recipient, e.campaign_id) for e in events.events] == [
        ("accepted", "a@example.net", "spring"), ("accepted", "b@example.net", "spring")]
    assert metrics["accept_total:queued"] == 1
    spool.close()


@pytest.mark.usefixtures("inline_on_any_disk")
async def test_enqueues_commit_on_the_callers_thread_only_while_the_caller_says_it_is_alone(tmp_path):
    """The SMTP ingress passes ``alone`` (one session open); the HTTP send API, whose requests
    come in parallel, does not: its enqueues keep the writer thread's group commit."""
    accept, spool, _, _ = step(tmp_path)  # as the HTTP send API builds it: no ``alone``
    await accept.accept(RAW, "app@shop.example", ["a@example.net"], queue_id="q1")
    assert spool.inline_commits == 0
    sessions = [1]
    accept.alone = lambda: sessions[0] <= 1
    await accept.accept(RAW, "app@shop.example", ["a@example.net"], queue_id="q2")
    assert spool.inline_commits == 1
    sessions[0] = 2
    await accept.accept(RAW, "app@shop.example", ["a@example.net"], queue_id="q3")
    assert spool.inline_commits == 1 and spool.commits == 3
    assert all(spool.show(q) is not None for q in ("q1", "q2", "q3"))
    spool.close()


async def test_a_refusal_spools_nothing_and_a_spool_error_is_an_outcome(tmp_path):
    accept, spool, events, metrics = step(tmp_path)
    refused = await accept.accept(RAW + b"spam\r\n", "app@shop.example", ["a@example.net"])
    assert refused.status == "refused" and refused.verdict == Reject(550, "5.7.1", "spam")
    spool.close()  # a closed database: the commit raises, nothing is claimed
    failed = await accept.accept(RAW, "app@shop.example", ["a@example.net"])
    assert (failed.status, failed.events) == ("spool_failed", [])
    assert events.events == [] and metrics["accept_total:refused"] == metrics["accept_total:spool_failed"] == 1


async def test_sink_addresses_are_discarded_with_an_event_and_the_rest_queued(tmp_path):
    accept, spool, events, _ = step(tmp_path, sink_addresses=["test@test.ru"])
    outcome = await accept.accept(RAW, "app@shop.example", ["test@test.ru", "a@example.net"], queue_id="q2")
    assert (outcome.status, outcome.recipients) == ("queued", ["a@example.net"])
    assert [(e.type, e.recipient, e.data) for e in events.events] == [
        ("discarded", "test@test.ru", {"reason": "sink address"})]
    only_sink = await accept.accept(RAW, "app@shop.example", ["test@test.ru"])
    assert only_sink.status == "discarded"
    spool.close()


async def test_inbound_mail_goes_to_its_handler_never_through_the_chain_or_spool(tmp_path):
    accept, spool, _, _ = step(tmp_path)
    received: list[tuple[str, list[str], bytes]] = []

    async def handler(mail_from: str, rcpts: list[str], data: bytes) -> None:
        received.append((mail_from, rcpts, data))

    accept.inbound = {"Bounces.GW.test": handler}
    assert accept.inbound_handler("bounces.gw.test.") is handler
    spam = RAW + b"spam\r\n"  # the chain would refuse it; a DSN must reach its handler whatever it says
    outcome = await accept.accept(spam, "", ["b-1@bounces.gw.test"], inbound=True)
    assert outcome.status == "handled" and received == [("", ["b-1@bounces.gw.test"], spam)]
    gone = await accept.accept(spam, "", ["b-1@elsewhere.test"], inbound=True)
    assert gone.status == "inbound_failed"
    assert spool.list_recipients() == []
    spool.close()


async def test_enqueue_raises_what_the_spool_raises_for_callers_that_must_fail(tmp_path):
    """Bounce notices: a notice that cannot be spooled fails like the results it belongs to."""
    spool = SqliteSpool(tmp_path / "spool.db")
    ctx = MessageContext(message=Message(RAW, "", ["app@shop.example"]), campaign_id="bounce-notices")
    events = await enqueue(spool, ctx, RAW, ["app@shop.example"], event_data={"notice_for": "q0"})
    assert [(e.type, e.recipient, {k: v for k, v in e.data.items() if k != "message"}) for e in events] == [
        ("accepted", "app@shop.example", {"notice_for": "q0"})]
    # the message log's summary rides along (the event store moves it into the log, not the event)
    assert events[0].data["message"]["subject"] == "hi" and events[0].data["message"]["size"] == len(RAW)
    spool.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        await enqueue(spool, ctx, RAW, ["app@shop.example"])


async def test_on_postgresql_the_accepted_event_and_log_row_commit_with_the_message(tmp_path, pg_url, monkeypatch):
    """A node that dies right after its 250 (before announcing) has lost nothing: the accepted event,
    the message log's row and the spooled message were one transaction. Announcing (the node lives)
    only counts the event: it is stored once."""
    import aiosmtplib

    from pipeline.app.gateway import Gateway
    from pipeline.config import parse_config
    from pipeline.events.messages import MessageLogReader
    from pipeline.events.postgres import PostgresEventStore
    from pipeline.ports import MessageFilter

    config = parse_config({
        "gateway": {"data_dir": str(tmp_path / "data"), "hostname": "gw.test"}, "storage": {"url": pg_url},
        "listeners": [{"name": "plain", "port": 0, "tls": "none", "require_tls": False}],
        "credentials": [{"name": "shop", "username": "shop", "secret": "pw-shop"}],
        "chain": {"plugins": ["campaign_tag"]},
        "limits": {"shutdown_grace": 2.0},
    })

    async def send(gw: Gateway, to: str) -> None:
        ingress = gw.ingress_service()
        gw.services = [ingress]
        await gw.start()
        try:
            await aiosmtplib.send(RAW, sender="app@shop.example", recipients=[to], hostname="127.0.0.1",
                                  port=ingress.port("plain"), username="shop", password="pw-shop",
                                  start_tls=False, use_tls=False)
        finally:
            await gw.stop(2.0)

    announced: list[str] = []

    async def dies_after_the_reply(self: AcceptStep, outcome: object) -> None:
        announced.append("never")  # the process is gone: nothing after the 250 runs

    with monkeypatch.context() as m:
        m.setattr(AcceptStep, "announce", dies_after_the_reply)
        await send(Gateway(config), "a@example.net")
    assert announced == ["never"]
    living = Gateway(config)
    await send(living, "b@example.net")
    assert living.counters["events_total:accepted"] == 1  # announced once, stored by the enqueue

    store = PostgresEventStore(pg_url)
    try:
        accepted = store.events(type="accepted")
        assert sorted(e.event.recipient or "" for e in accepted) == ["a@example.net", "b@example.net"]
        log = MessageLogReader.on_store(store)
        page, _ = log.search(MessageFilter(recipient="a@example.net"))
        assert [m["recipients"][0]["state"] for m in page] == ["queued"] and page[0]["mail_from"] == "app@shop.example"
        assert store.query("SELECT COUNT(*) FROM messages") == [(2,)]  # and both are in the spool
    finally:
        store.close()
