"""The delivery service end to end: spool -> processing -> egress -> results, events, retries."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import Discard, Plugin, Reject, TempFail, hookimpl
from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_config
from pipeline.chain.loader import PluginSet
from pipeline.chain.runner import Chain
from pipeline.config import EgressSection
from pipeline.contract.context import Credential, Event, MessageContext
from pipeline.contract.message import Message
from pipeline.delivery.notices import BounceNotices, notice_features
from pipeline.delivery.scheduler import DeliveryService
from pipeline.egress.base import Copy
from pipeline.egress.smtp import SmtpEgress
from pipeline.spool import QueuedMessage
from pipeline.spool.sqlite import SqliteSpool
from tests.support.smtp_sink import (
    FAST_RETRIES,
    EventRecorder,
    SinkController,
    SinkHandler,
    closed_port,
    server_tls,
    smtp_egress,
    start_sink,
    verdict_plugin,
)

MESSAGE = b"From: app@shop.example\r\nTo: user@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
RAW = b"From: app@example.org\r\nTo: someone@example.net\r\nSubject: test\r\n\r\nHello\r\n"
FAST = {**FAST_RETRIES, "bounce_notices": False}  # notices to the sender: tests/test_notices.py


TempFailPlugin = verdict_plugin(
    "tempfail", TempFail(451, "4.3.0", "key server unreachable"),
    "Fails every personalize call temporarily (a plugin bug, a missing key...).",
)


class VerdictByRecipient(Plugin):
    """Rejects reject@..., discards discard@..., lets the rest through, adds a header."""

    name = "verdicts"

    @hookimpl
    def on_personalize(self, ctx: Any) -> Any:
        if ctx.recipient.startswith("reject@"):
            return Reject(550, "5.7.1", "policy says no")
        if ctx.recipient.startswith("discard@"):
            return Discard("test discard")
        ctx.message.add_header("X-Processed-For", ctx.recipient)
        return None


@pytest.fixture(autouse=True)
def _events():
    EventRecorder.reset()
    yield
    EventRecorder.reset()


async def start_service(
    data_dir: Path, *, egress: dict | None = None, spool: dict | None = None, plugins: tuple = (), workers: int = 0,
    egresses: dict | None = None,
) -> tuple[Gateway, DeliveryService]:
    overrides: dict[str, Any] = {"gateway": {"data_dir": str(data_dir)}, "spool": {**FAST, **(spool or {})}}
    if egress:
        overrides["egress"] = egress
    if egresses:
        overrides["egresses"] = egresses
    gw = Gateway(make_config(overrides), extra_plugins=[EventRecorder, *plugins])
    svc = gw.delivery_service(workers=workers)
    await svc.start()
    return gw, svc


async def enqueue(gw: Gateway, rcpts: list[str], raw: bytes = RAW, credential: Credential | None = None,
                  campaign: str | None = None) -> str:
    ctx = MessageContext(message=Message(raw, "app@example.org", rcpts), credential=credential, campaign_id=campaign)
    await gw.spool.enqueue(ctx, raw, rcpts)
    return ctx.queue_id


async def stop(gw: Gateway, svc: DeliveryService) -> None:
    await svc.stop(5.0)
    gw.spool.close()


async def test_smarthost_delivery_with_starttls_and_auth_emits_delivered(sinks, data_dir, tls_cert):
    controller, sink = sinks(tls=tls_cert, require_starttls=True, auth=("gw", "pw"))
    gw, svc = await start_service(
        data_dir,
        egress=smtp_egress(controller.port, tls="starttls", ca_file=str(tls_cert[0]), username="gw", password="pw"),
    )
    try:
        qid = await enqueue(gw, ["a@example.net", "b@example.net"], campaign="spring")
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 2)
    finally:
        await stop(gw, svc)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["a@example.net", "b@example.net"]
    assert all(m.tls and m.login == "gw" for m in sink.messages)
    ev = EventRecorder.of("delivered", "a@example.net")[0]
    assert ev.queue_id == qid and ev.campaign_id == "spring"
    assert ev.data["dsn"] == "2.0.0" and ev.data["relay"].endswith(f":{controller.port}")
    assert gw.spool.path.exists()


async def test_4xx_is_deferred_then_retried_until_delivered(sinks, data_dir):
    controller, sink = sinks(replies={"slow@example.net": ["451 4.7.1 greylisted", "451 4.7.1 greylisted"]})
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port))
    try:
        await enqueue(gw, ["slow@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
    finally:
        await stop(gw, svc)
    deferred = EventRecorder.of("deferred")
    assert [e.data["dsn"] for e in deferred] == ["4.7.1", "4.7.1"]
    assert deferred[0].data["next_attempt"] > deferred[0].time - 1
    assert EventRecorder.of("delivered")[0].data["attempts"] == 3
    assert len(sink.messages) == 1


async def test_5xx_bounces_with_event_and_leaves_queue(sinks, data_dir):
    controller, sink = sinks(replies={"gone@example.net": ["550 5.1.1 user unknown"]})
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port))
    try:
        qid = await enqueue(gw, ["gone@example.net", "here@example.net"])
        await EventRecorder.until(lambda: EventRecorder.of("bounced") and EventRecorder.of("delivered"))
        [bounce] = EventRecorder.of("bounced")
        assert bounce.recipient == "gone@example.net" and bounce.queue_id == qid
        assert bounce.data["dsn"] == "5.1.1" and bounce.data["reply"] == "550 5.1.1 user unknown"
        await EventRecorder.until(lambda: gw.spool.show(qid) is None)
    finally:
        await stop(gw, svc)


async def test_refused_connection_is_deferred_and_stays_queued(data_dir):
    port = closed_port()
    gw, svc = await start_service(data_dir, egress=smtp_egress(port), spool={"retry_min": 30, "retry_max": 60})
    try:
        qid = await enqueue(gw, ["x@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("deferred")))
        row = gw.spool.show(qid)["recipients"][0]
    finally:
        await stop(gw, svc)
    assert row["state"] == "deferred" and row["attempts"] == 1 and "4.4.1" in row["last_reply"]
    assert EventRecorder.of("deferred")[0].data["dsn"] == "4.4.1"


async def test_deferred_past_lifetime_expires_with_447(data_dir):
    port = closed_port()
    gw, svc = await start_service(data_dir, egress=smtp_egress(port), spool={"lifetime": 0.3})
    try:
        qid = await enqueue(gw, ["x@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("expired")))
        assert gw.spool.show(qid) is None
    finally:
        await stop(gw, svc)
    [expired] = EventRecorder.of("expired")
    assert expired.data["dsn"] == "4.4.7" and "expired" in expired.data["reply"]
    assert len(EventRecorder.of("deferred")) >= 1


async def test_plugin_tempfail_is_retried_then_failed_with_event(data_dir, caplog):
    gw, svc = await start_service(data_dir, egress={"type": "null"}, plugins=(TempFailPlugin,),
                                  spool={"max_plugin_attempts": 3})
    try:
        qid = await enqueue(gw, ["x@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("failed")))
    finally:
        await stop(gw, svc)
    assert len(EventRecorder.of("deferred")) == 2
    [failed] = EventRecorder.of("failed")
    assert "key server unreachable" in failed.data["reply"]
    assert any(qid in r.getMessage() and "status=failed" in r.getMessage() for r in caplog.records)
    assert EventRecorder.of("delivered") == []


async def test_reject_bounces_discard_discards_rest_delivered_to_default_maildir(data_dir):
    gw, svc = await start_service(data_dir, plugins=(VerdictByRecipient,))
    try:
        await enqueue(gw, ["reject@example.net", "discard@example.net", "ok@example.net"])
        await EventRecorder.until(lambda: len(EventRecorder.events) >= 3)
    finally:
        await stop(gw, svc)
    assert {(e.type, e.recipient) for e in EventRecorder.events} == {
        ("bounced", "reject@example.net"),
        ("discarded", "discard@example.net"),
        ("delivered", "ok@example.net"),
    }
    assert EventRecorder.of("bounced")[0].data["dsn"] == "5.7.1"
    files = list((data_dir / "maildir" / "new").iterdir())
    assert len(files) == 1 and b"X-Processed-For: ok@example.net" in files[0].read_bytes()


async def test_sandbox_credential_never_leaves_even_with_smtp_egress(sinks, data_dir):
    controller, sink = sinks()
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port))
    try:
        await enqueue(gw, ["x@example.net"], credential=Credential("demo", sandbox=True))
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
    finally:
        await stop(gw, svc)
    assert sink.messages == []
    assert len(os.listdir(data_dir / "sandbox" / "new")) == 1
    assert EventRecorder.of("delivered")[0].credential == "demo"


async def test_credential_named_egress_overrides_default(sinks, data_dir):
    controller, sink = sinks()
    gw, svc = await start_service(data_dir, egresses={"relay": smtp_egress(controller.port)})
    try:
        await enqueue(gw, ["x@example.net"], credential=Credential("app", egress="relay"))
        await enqueue(gw, ["y@example.net"])
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 2)
    finally:
        await stop(gw, svc)
    assert [m.rcpt_tos for m in sink.messages] == [["x@example.net"]]
    assert len(os.listdir(data_dir / "maildir" / "new")) == 1


async def test_unknown_credential_egress_defers_not_drops(data_dir):
    gw, svc = await start_service(data_dir, spool={"retry_min": 30})
    try:
        await enqueue(gw, ["x@example.net"], credential=Credential("app", egress="nope"))
        await EventRecorder.until(lambda: bool(EventRecorder.of("deferred")))
    finally:
        await stop(gw, svc)
    assert "nope" in EventRecorder.of("deferred")[0].data["reply"]


@pytest.mark.slow  # a few seconds: subprocesses / many generated cases (fast loop skips it)
async def test_worker_processes_run_the_chain(sinks, data_dir):
    controller, sink = sinks()
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port), plugins=(VerdictByRecipient,),
                                  workers=2)
    try:
        await asyncio.gather(*(enqueue(gw, [f"r{i}@example.net"]) for i in range(20)))
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 20, timeout=30)
    finally:
        await stop(gw, svc)
    assert all(m.header("X-Processed-For") == m.rcpt_tos[0] for m in sink.messages)


async def test_restart_resumes_recipients_left_in_processing(sinks, data_dir):
    controller, sink = sinks()
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port))
    await svc.stop(0)
    qid = await enqueue(gw, ["x@example.net"])
    claimed = gw.spool.claim(10, lease=3600)  # as if a previous run died holding it
    assert [m.queue_id for m in claimed] == [qid]
    gw.spool.close()
    gw2, svc2 = await start_service(data_dir, egress=smtp_egress(controller.port))
    try:
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
    finally:
        await stop(gw2, svc2)
    assert len(sink.messages) == 1


async def test_stop_hands_back_the_message_in_hand(data_dir):
    release, entered = asyncio.Event(), asyncio.Event()
    gw, svc = await start_service(data_dir, egress={"type": "null"})

    class Stuck:
        name = "stuck"

        async def deliver(self, copies):
            entered.set()
            await release.wait()
            return []

        async def close(self):
            return None

    svc.router._egresses["default"] = Stuck()
    qid = await enqueue(gw, ["x@example.net"])
    await asyncio.wait_for(entered.wait(), 10)
    assert gw.spool.show(qid)["recipients"][0]["state"] == "processing"
    await svc.stop(0.05)
    row = gw.spool.show(qid)["recipients"][0]
    gw.spool.close()
    assert row["state"] == "queued" and row["attempts"] == 0
    assert EventRecorder.events == []


class DieOnce(Plugin):
    """Kills its worker process the first time it runs (a segfault, the OOM killer)."""

    name = "die_once"

    @hookimpl
    def on_transform(self, ctx: Any) -> Any:
        marker = self.env.data_dir / "died-once"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("x")
            os._exit(1)
        return None


@pytest.mark.slow  # a few seconds: subprocesses / many generated cases (fast loop skips it)
async def test_dead_worker_process_defers_and_retry_delivers(data_dir):
    gw, svc = await start_service(data_dir, egress={"type": "null"}, plugins=(DieOnce,), workers=1)
    try:
        await enqueue(gw, ["x@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")), timeout=30)
    finally:
        await stop(gw, svc)
    [deferred] = EventRecorder.of("deferred")
    assert "WorkerDied" in deferred.data["reply"]
    assert (data_dir / "died-once").exists()


async def test_deliver_by_expires_the_copy_before_the_spool_lifetime_and_events_carry_the_metadata(data_dir):
    port = closed_port()
    gw, svc = await start_service(data_dir, egress=smtp_egress(port), spool={"lifetime": 3600})
    try:
        ctx = MessageContext(message=Message(RAW, "app@example.org", ["x@example.net"]), tags=["receipts"],
                             metadata={"order_id": "7"}, deliver_by=time.time() + 0.3)
        await gw.spool.enqueue(ctx, RAW, ["x@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("expired")))
    finally:
        await stop(gw, svc)
    [expired] = EventRecorder.of("expired")
    assert expired.data["dsn"] == "4.4.7"
    assert (expired.tags, expired.metadata) == (("receipts",), {"order_id": "7"})


async def test_a_copy_first_tried_after_its_deliver_by_is_not_attempted_and_expires(sinks, data_dir):
    controller, sink = sinks()
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port), spool={"lifetime": 3600})
    now = time.time()
    try:
        for rcpt, kw in (
            ("late@example.net", {"deliver_by": now - 1}),  # already past when first claimed
            ("held@example.net", {"not_before": now + 0.5, "deliver_by": now + 0.2}),  # due only after it
            ("on-time@example.net", {"deliver_by": now + 600}),
        ):
            ctx = MessageContext(message=Message(RAW, "app@example.org", [rcpt]), tags=["t"], **kw)
            await gw.spool.enqueue(ctx, RAW, [rcpt])
        await EventRecorder.until(lambda: len(EventRecorder.of("expired")) == 2 and bool(EventRecorder.of("delivered")))
    finally:
        await stop(gw, svc)
    expired = {e.recipient: e for e in EventRecorder.of("expired")}
    assert sorted(expired) == ["held@example.net", "late@example.net"]
    for e in expired.values():
        assert (e.data["dsn"], e.data["attempts"], e.data["relay"], e.tags) == ("4.4.7", 0, "none", ("t",))
        assert "deliver-by" in e.data["reply"]
    assert not EventRecorder.of("deferred")
    assert [m.rcpt_tos for m in sink.messages] == [["on-time@example.net"]]  # nothing late reached the sink


async def test_not_before_holds_the_recipients_until_then(sinks, data_dir):
    controller, sink = sinks()
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port))
    try:
        send_at = time.time() + 1.0
        ctx = MessageContext(message=Message(RAW, "app@example.org", ["later@example.net"]), not_before=send_at)
        await gw.spool.enqueue(ctx, RAW, ["later@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("delivered")))
    finally:
        await stop(gw, svc)
    [delivered] = EventRecorder.of("delivered")
    assert delivered.time >= send_at and len(sink.messages) == 1
class _Events:
    """An event sink port that keeps what it is given (the gateway's is the event store)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event, *, strict: bool = False) -> None:
        self.events.append(event)


async def test_delivery_runs_on_its_ports_alone_without_a_gateway(tmp_path: Path):
    """The composition root hands delivery a spool, an event sink, a chain and a notice policy: nothing else."""
    config = make_config({"gateway": {"data_dir": str(tmp_path / "data")}, "spool": FAST,
                          "egress": {"type": "maildir", "maildir": str(tmp_path / "maildir")}})
    spool, events = SqliteSpool(tmp_path / "spool.db"), _Events()
    plugins = PluginSet(config, [VerdictByRecipient])
    notices = BounceNotices(config, spool, events, notice_features(config, plugins.plugins))
    svc = DeliveryService(config, spool, events, Chain(plugins), notices, workers=0)
    ctx = MessageContext(message=Message(RAW, "app@example.org", ["ok@example.net", "reject@example.net"]))
    await spool.enqueue(ctx, RAW, ["ok@example.net", "reject@example.net"])
    try:
        assert await svc.run_once() == 1
    finally:
        await svc.stop(1.0)
        spool.close()
    by_rcpt = {e.recipient: e for e in events.events}
    assert (by_rcpt["ok@example.net"].type, by_rcpt["reject@example.net"].type) == ("delivered", "bounced")
    assert by_rcpt["reject@example.net"].data["reply"] == "550 5.7.1 policy says no"
    [copy] = [p for p in (tmp_path / "maildir" / "new").iterdir()]
    assert b"X-Processed-For: ok@example.net" in copy.read_bytes()


# -- issue 5 point 4: the default retry schedule and the Postfix-style line -------------------


def test_default_retry_schedule_doubles_from_5_minutes_to_1_hour_and_expires_after_5_days(tmp_path):
    config = make_config({"gateway": {"data_dir": str(tmp_path / "data")}})
    assert (config.spool.retry_min, config.spool.retry_max, config.spool.lifetime) == (300.0, 3600.0, 432000.0)
    t0 = 1_000_000.0
    now = {"t": t0 + 10}
    svc = Gateway(config).delivery_service(workers=0, clock=lambda: now["t"])
    delays = []
    for attempts in range(7):
        msg = QueuedMessage("Q1", "a@example.org", b"", {}, t0, ["x@example.net"], attempts={"x@example.net": attempts})
        out = svc._defer(msg, "x@example.net", "4.2.0", "451 4.2.0 busy", "mx.example.net", False)
        assert (out.state, out.attempts) == ("deferred", attempts + 1)
        delays.append(out.next_attempt - now["t"])
    assert delays == [300.0, 600.0, 1200.0, 2400.0, 3600.0, 3600.0, 3600.0]
    # the last attempt is made at the lifetime, not after it; past it the recipient expires with 4.4.7
    now["t"] = t0 + 432000 - 100
    msg = QueuedMessage("Q1", "a@example.org", b"", {}, t0, ["x@example.net"], attempts={"x@example.net": 40})
    assert svc._defer(msg, "x@example.net", "4.2.0", "busy", "r", False).next_attempt == t0 + 432000
    now["t"] = t0 + 432000
    out = svc._defer(msg, "x@example.net", "4.2.0", "451 4.2.0 busy", "r", False)
    assert (out.state, out.dsn) == ("expired", "4.4.7")
    assert out.reply == "message expired after 432000 s in the queue; last: 451 4.2.0 busy"


async def test_each_result_is_logged_as_one_postfix_style_line(data_dir, caplog):
    caplog.set_level(logging.INFO, "smtpgate")
    EventRecorder.reset()
    controller, _ = start_sink(known={"a@example.net"})
    try:
        gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port))
        try:
            qid = await enqueue(gw, ["a@example.net", "reject@example.net"])
            await EventRecorder.until(lambda: len(EventRecorder.events) >= 2)
        finally:
            await stop(gw, svc)
    finally:
        controller.stop()
        EventRecorder.reset()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{qid}: to=")]
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{controller.port}"
    assert len(lines) == 2, lines
    assert any(re.fullmatch(rf"{qid}: to=<a@example\.net>, relay={relay}, delay=\d+\.\d\d, dsn=2\.0\.0, tls=none, "
                            r"status=sent \(250 .+\)", line) for line in lines), lines
    assert any(re.fullmatch(rf"{qid}: to=<reject@example\.net>, relay={relay}, delay=\d+\.\d\d, dsn=5\.\d\.\d+, tls=none, "
                            r"status=bounced \(550 .+\)", line) for line in lines), lines


# -- issue 5 point 2: a plugin that raises after acceptance is retried, then fails loudly -------


class Raising(Plugin):
    """A plugin bug in a processing phase: an exception, not a verdict."""

    name = "raising_after_acceptance"

    @hookimpl
    def on_personalize(self, ctx: Any) -> None:
        raise RuntimeError("plugin bug in personalize")


async def test_plugin_exception_after_acceptance_is_deferred_then_failed_never_dropped(data_dir, caplog):
    EventRecorder.reset()
    gw, svc = await start_service(data_dir, egress={"type": "null"}, plugins=(Raising,),
                                  spool={"max_plugin_attempts": 2})
    try:
        qid = await enqueue(gw, ["x@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("failed")))
        record = gw.spool.show(qid)
    finally:
        await stop(gw, svc)
    types = [e.type for e in EventRecorder.events]
    EventRecorder.reset()
    assert types == ["deferred", "failed"]
    assert record is None or record["recipients"][0]["state"] == "failed"
    assert any(r.getMessage().startswith(f"{qid}: to=<x@example.net>") and "status=failed" in r.getMessage()
               for r in caplog.records)


# -- issue 5 point 3: the smarthost over implicit TLS (SMTPS), certificate verified ------------


async def test_smarthost_delivers_over_implicit_tls_with_a_verified_certificate(tls_cert):
    handler = SinkHandler()
    controller = SinkController(handler, ssl_context=server_tls(*tls_cert), data_size_limit=0)
    controller.start()
    try:
        section = EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="implicit",
                                ca_file=tls_cert[0])
        egress = SmtpEgress(section, "gw.test")
        [res] = await egress.deliver([Copy("Q1", "b@example.net", "a@example.org", MESSAGE)])
        await egress.close()
        untrusting = SmtpEgress(EgressSection(type="smtp", host="127.0.0.1", port=controller.port, tls="implicit"),
                                "gw.test")
        [refused] = await untrusting.deliver([Copy("Q2", "c@example.net", "a@example.org", MESSAGE)])
        await untrusting.close()
    finally:
        controller.stop()
    assert (res.status, res.relay) == ("sent", f"127.0.0.1[127.0.0.1]:{controller.port}")
    assert [m.rcpt_tos for m in handler.messages] == [["b@example.net"]]
    # the same port refuses a client that does not trust the certificate: the delivery was over
    # TLS (aiosmtpd leaves session.ssl unset on implicit TLS), and verification is on by default
    assert (refused.status, refused.dsn) == ("deferred", "4.7.5")
