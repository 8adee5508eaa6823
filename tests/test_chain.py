"""The chain runner: order, first verdict wins, Accept, fail closed (exception, timeout, bad return),
feature switches, traces, and the processing fan-out."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pipeline import Accept, Discard, MessageContext, Plugin, Reject, Session, TempFail, hookimpl
from pipeline.chain.driver import make_chain, make_config, run_chain
from pipeline.chain.processing import process_message
from pipeline.chain.runner import Chain, Trace
from pipeline.contract.message import Message
from tests.support import SAMPLES

RAW = (SAMPLES / "01-plain-text.eml").read_bytes()


def make_plugin(
    name: str,
    phase: str = "on_message",
    result: Any = None,
    log: list[tuple[str, str, str | None]] | None = None,
    feature: str | None = None,
    action: Callable[[MessageContext], None] | None = None,
) -> type:
    """A plugin class with one hook that logs its call, runs ``action`` and returns ``result``
    (``result`` may be a callable, called for the return value, so it can raise)."""

    def hook(self: Any, ctx: MessageContext) -> Any:
        if log is not None:
            log.append((name, phase, ctx.recipient))
        if action is not None:
            action(ctx)
        return result() if callable(result) else result

    hook.__name__ = phase
    return type(
        name.title().replace("_", ""), (Plugin,), {"name": name, "feature": feature, "feature_default": True if feature else None, phase: hookimpl(hook)}
    )


def chain_of(*plugins: type, timeout: float | None = None) -> Chain:
    chain = make_chain(make_config(), list(plugins))
    if timeout is not None:
        chain.timeout = timeout
    return chain


def ctx_for(
    features: dict[str, bool] | None = None, rcpts: tuple[str, ...] = ("b@example.com",)
) -> MessageContext:
    return MessageContext(Message(RAW, "a@example.com", list(rcpts)), features=dict(features or {}))


# ------------------------------------------------------------------------------------------------
# Order and verdicts
# ------------------------------------------------------------------------------------------------


async def test_plugins_run_in_config_order():
    calls: list[tuple[str, str, str | None]] = []
    chain = chain_of(*(make_plugin(n, log=calls) for n in ("first", "second", "third")))
    assert await chain.run("on_message", ctx=ctx_for()) is None
    assert [c[0] for c in calls] == ["first", "second", "third"]


async def test_order_holds_in_every_phase_and_only_implementers_run():
    calls: list[tuple[str, str, str | None]] = []
    chain = chain_of(
        make_plugin("z_transform", "on_transform", log=calls),
        make_plugin("a_message", "on_message", log=calls),
        make_plugin("m_transform", "on_transform", log=calls),
    )
    assert [c.plugin for c in chain.calls("on_transform")] == ["z_transform", "m_transform"]
    await chain.run("on_transform", ctx=ctx_for())
    assert calls == [("z_transform", "on_transform", None), ("m_transform", "on_transform", None)]


@pytest.mark.parametrize(
    "verdict", [Reject(554, "5.7.1", "no"), TempFail(452, "4.3.1", "full"), Discard("trap"), Accept()]
)
async def test_the_first_verdict_stops_the_phase(verdict):
    calls: list[tuple[str, str, str | None]] = []
    chain = chain_of(
        make_plugin("one", log=calls),
        make_plugin("two", result=verdict, log=calls),
        make_plugin("three", log=calls),
    )
    assert await chain.run("on_message", ctx=ctx_for()) == verdict
    assert [c[0] for c in calls] == ["one", "two"]


async def test_async_hook_result_is_awaited():
    class AsyncReject(Plugin):
        name = "async_reject"

        @hookimpl
        async def on_message(self, ctx: MessageContext) -> Reject:
            await asyncio.sleep(0)
            return Reject(550, "5.7.1", "async no")

    assert await chain_of(AsyncReject).run("on_message", ctx=ctx_for()) == Reject(550, "5.7.1", "async no")


def test_accept_skips_only_the_rest_of_its_phase():
    calls: list[tuple[str, str, str | None]] = []
    result = run_chain(
        RAW,
        [
            make_plugin("allow", "on_message", result=Accept(), log=calls),
            make_plugin("validator", "on_message", result=Reject(550, "5.7.1", "no"), log=calls),
            make_plugin("fast_path", "on_transform", result=Accept(), log=calls),
            make_plugin("inliner", "on_transform", log=calls),
            make_plugin("tracker", "on_personalize", log=calls),
            make_plugin("signer", "on_sign", log=calls),
        ],
        rcpt_tos=["b@example.com"],
    )
    assert result.verdict is None  # Accept ends only its phase: the message goes on
    assert [(e.plugin, e.verdict) for e in result.trace.entries if e.phase == "on_message"] == [("allow", "accept")]
    assert [c[0] for c in calls] == ["allow", "fast_path", "tracker", "signer"]
    assert result.copies[0].deliverable


def test_discard_at_admission_produces_no_copy():
    calls: list[tuple[str, str, str | None]] = []
    result = run_chain(
        RAW,
        [make_plugin("trap", result=Discard("trap")), make_plugin("later", "on_transform", log=calls)],
    )
    assert result.verdict == Discard("trap")
    assert result.copies == []
    assert calls == []


# ------------------------------------------------------------------------------------------------
# Fail closed
# ------------------------------------------------------------------------------------------------


def _boom() -> None:
    raise RuntimeError("database is down")


async def test_exception_fails_closed_with_451_and_the_plugin_logged(caplog):
    calls: list[tuple[str, str, str | None]] = []
    chain = chain_of(make_plugin("broken", result=_boom), make_plugin("after", log=calls))
    trace = Trace()
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        verdict = await chain.run("on_message", ctx=ctx_for(), trace=trace)
    assert isinstance(verdict, TempFail)
    assert verdict.reply() == "451 4.3.0 Temporary local problem, try again later"
    assert calls == []  # never "continue"
    assert "plugin=broken" in caplog.text and "database is down" in caplog.text
    assert trace.entries[-1].plugin == "broken"
    assert trace.entries[-1].error == "RuntimeError: database is down"


async def test_sync_hook_past_its_timeout_is_interrupted_and_fails_closed(caplog):
    def slow() -> None:
        time.sleep(5)

    chain = chain_of(make_plugin("slow_sync", result=slow), timeout=0.2)
    start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        verdict = await chain.run("on_message", ctx=ctx_for())
    assert time.monotonic() - start < 2  # interrupted, not waited out
    assert verdict is not None and verdict.reply().startswith("451 4.3.0")
    assert "plugin=slow_sync" in caplog.text and "timed out after 0.2 s" in caplog.text


async def test_each_sync_hook_gets_its_own_full_timeout():
    """The timer is shared between calls; a hook that starts late must not inherit a short deadline."""

    def busy() -> None:
        time.sleep(0.5)

    # 1 s in all, 0.5 s each: a deadline shared by both would cut the second hook 0.2 s before its
    # end; each hook's own leaves it 0.3 s to spare, for a sleep that overshoots on a loaded machine
    chain = chain_of(make_plugin("a", result=busy), make_plugin("b", result=busy), timeout=0.8)
    assert await chain.run("on_message", ctx=ctx_for()) is None


async def test_a_pending_long_timer_does_not_delay_a_shorter_timeout():
    await chain_of(make_plugin("quick"), timeout=30).run("on_message", ctx=ctx_for())

    def slow() -> None:
        time.sleep(5)

    start = time.monotonic()
    verdict = await chain_of(make_plugin("slow", result=slow), timeout=0.2).run("on_message", ctx=ctx_for())
    assert time.monotonic() - start < 2
    assert isinstance(verdict, TempFail)


async def test_a_stray_alarm_between_hooks_is_harmless():
    await chain_of(make_plugin("quick"), timeout=30).run("on_message", ctx=ctx_for())
    os.kill(os.getpid(), signal.SIGALRM)  # the pending timer firing while no hook runs
    assert await chain_of(make_plugin("after")).run("on_message", ctx=ctx_for()) is None


async def test_a_timer_left_pending_after_the_last_hook_is_cancelled_at_exit():
    """Otherwise it fires after the interpreter restored SIGALRM's default action: exit 142."""
    import atexit

    from pipeline.chain.runner import _Deadline

    await chain_of(make_plugin("quick"), timeout=30).run("on_message", ctx=ctx_for())
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # kept pending on purpose (cheap calls)
    unregistered = atexit.unregister(_Deadline.disarm)  # what atexit would run; put back below
    try:
        _Deadline.disarm()
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    finally:
        atexit.register(_Deadline.disarm)
    assert unregistered is None


async def test_the_timeout_handler_is_reinstalled_if_someone_replaced_it():
    original = signal.getsignal(signal.SIGALRM)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    try:

        def slow() -> None:
            time.sleep(5)

        start = time.monotonic()
        verdict = await chain_of(make_plugin("slow", result=slow), timeout=0.2).run(
            "on_message", ctx=ctx_for()
        )
        assert time.monotonic() - start < 2 and isinstance(verdict, TempFail)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, original)


async def test_async_hook_past_its_timeout_is_cancelled_and_fails_closed(caplog):
    cancelled = asyncio.Event()

    class SlowAsync(Plugin):
        name = "slow_async"

        @hookimpl
        async def on_message(self, ctx: MessageContext) -> None:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    chain = chain_of(SlowAsync, timeout=0.2)
    start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        verdict = await chain.run("on_message", ctx=ctx_for())
    assert time.monotonic() - start < 2
    assert verdict is not None and verdict.reply().startswith("451 4.3.0")
    assert cancelled.is_set()
    assert "plugin=slow_async" in caplog.text and "timed out" in caplog.text


def test_sync_hook_overrun_outside_the_main_thread_is_still_a_failure(caplog):
    """No SIGALRM off the main thread: the overrun is detected when the hook returns."""

    def slow() -> None:
        time.sleep(0.3)

    chain = chain_of(make_plugin("slow_thread", result=slow), timeout=0.1)
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(asyncio.run(chain.run("on_message", ctx=ctx_for()))))
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        thread.start()
        thread.join(10)
    assert out and out[0] is not None and out[0].reply().startswith("451 4.3.0")
    assert "plugin=slow_thread" in caplog.text


@pytest.mark.parametrize("bad", [True, "OK", 250, {"reply": 250}, Reject])
async def test_a_non_verdict_return_value_fails_closed(bad, caplog):
    chain = chain_of(make_plugin("sloppy", result=lambda: bad))
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        verdict = await chain.run("on_message", ctx=ctx_for())
    assert isinstance(verdict, TempFail) and verdict.code == 451 and verdict.enhanced == "4.3.0"
    assert "plugin=sloppy" in caplog.text and "not a verdict" in caplog.text


async def test_an_edit_after_the_signer_sealed_fails_closed(caplog):
    def seal(ctx: MessageContext) -> None:
        ctx.message.seal()

    def late_edit(ctx: MessageContext) -> None:
        ctx.message.add_header("X-Late", "1")

    chain = chain_of(
        make_plugin("sealer", "on_personalize", action=seal),
        make_plugin("late", "on_personalize", action=late_edit),
    )
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        verdict = await chain.run("on_personalize", ctx=ctx_for())
    assert isinstance(verdict, TempFail)
    assert "plugin=late" in caplog.text and "SealedError" in caplog.text


# ------------------------------------------------------------------------------------------------
# Switches, traces, edits
# ------------------------------------------------------------------------------------------------


async def test_a_plugin_whose_feature_is_off_is_skipped_and_the_trace_says_so():
    calls: list[tuple[str, str, str | None]] = []
    chain = chain_of(
        make_plugin("tracker", log=calls, feature="trackclicks"),
        make_plugin("pixel", log=calls, feature="trackopens"),
        make_plugin("always", log=calls),
    )
    trace = Trace()
    await chain.run("on_message", ctx=ctx_for({"trackclicks": False, "trackopens": True}), trace=trace)
    assert [c[0] for c in calls] == ["pixel", "always"]
    assert [(e.plugin, e.verdict) for e in trace.entries] == [
        ("tracker", "skipped (trackclicks off)"),
        ("pixel", "continue"),
        ("always", "continue"),
    ]


async def test_trace_records_phase_plugin_verdict_time_and_attributed_edits():
    def tag(ctx: MessageContext) -> None:
        ctx.message.add_header("X-Tagged", "yes")

    chain = chain_of(
        make_plugin("tagger", action=tag), make_plugin("judge", result=Reject(550, "5.7.1", "no"))
    )
    trace = Trace()
    await chain.run("on_message", ctx=ctx_for(), trace=trace)
    tagger, judge = trace.entries
    assert (tagger.phase, tagger.plugin, tagger.verdict) == ("on_message", "tagger", "continue")
    assert [(e.plugin, e.action, e.target) for e in tagger.edits] == [("tagger", "add_header", "X-Tagged")]
    assert judge.verdict == "reject 550 5.7.1" and judge.edits == []
    assert tagger.ms >= 0 and judge.ms >= 0
    text = trace.render()
    assert "tagger" in text and "add_header X-Tagged = yes" in text and "reject 550 5.7.1" in text


async def test_session_phases_run_with_their_own_arguments():
    seen: list[str] = []

    class Gate(Plugin):
        name = "gate"

        @hookimpl
        def on_connect(self, session: Session) -> Reject | None:
            seen.append(session.peer_ip)
            return Reject(554, "5.7.1", "blocked") if session.peer_ip == "192.0.2.66" else None

        @hookimpl
        def on_helo(self, hostname: str) -> None:
            seen.append(hostname)

    chain = chain_of(Gate)
    assert await chain.run("on_connect", session=Session(peer=("192.0.2.1", 1))) is None
    assert await chain.run("on_helo", session=Session(), hostname="mx.example.com") is None
    assert await chain.run("on_connect", session=Session(peer=("192.0.2.66", 1))) == Reject(
        554, "5.7.1", "blocked"
    )
    assert seen == ["192.0.2.1", "mx.example.com", "192.0.2.66"]


async def test_event_hook_errors_are_logged_and_do_not_stop_other_plugins(caplog):
    from pipeline import Event

    got: list[str] = []

    class Broken(Plugin):
        name = "broken_events"

        @hookimpl
        def on_event(self, event: Event) -> None:
            raise ValueError("nope")

    class Recorder(Plugin):
        name = "recorder"

        @hookimpl
        async def on_event(self, event: Event) -> None:
            got.append(event.type)

    chain = chain_of(Broken, Recorder)
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        await chain.emit(Event("delivered", queue_id="q1"))
    assert got == ["delivered"]
    assert "plugin=broken_events" in caplog.text


async def test_a_sync_event_hook_past_its_timeout_is_interrupted_and_logged(caplog):
    from pipeline import Event

    got: list[str] = []

    class Stuck(Plugin):
        name = "stuck_events"

        @hookimpl
        def on_event(self, event: Event) -> None:
            while True:  # would block the event loop forever without the deadline
                pass

    class Recorder(Plugin):
        name = "recorder"

        @hookimpl
        def on_event(self, event: Event) -> None:
            got.append(event.type)

    chain = chain_of(Stuck, Recorder, timeout=0.2)
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        await chain.emit(Event("opened", queue_id="q1"))
    assert got == ["opened"]
    assert "plugin=stuck_events on_event(opened) timed out" in caplog.text


async def test_plugin_notes_of_one_recipient_copy_do_not_leak_into_another():
    def note(ctx: MessageContext) -> None:
        ctx.notes["seen"].append(ctx.recipient)
        ctx.message.add_header("X-Seen", ",".join(ctx.notes["seen"]))

    chain = chain_of(make_plugin("noter", "on_personalize", action=note))
    ctx = ctx_for(rcpts=("b@example.com", "c@example.com"))
    ctx.notes["seen"] = []
    copies = await process_message(chain, ctx)
    seen = [Message(c.data or b"").get("X-Seen") for c in copies]
    assert seen == ["b@example.com", "c@example.com"]
    assert ctx.notes["seen"] == []


# ------------------------------------------------------------------------------------------------
# Processing fan-out
# ------------------------------------------------------------------------------------------------


async def test_transform_runs_once_personalize_and_sign_once_per_recipient():
    calls: list[tuple[str, str, str | None]] = []

    def personal(ctx: MessageContext) -> None:
        ctx.message.add_header("X-For", ctx.recipient or "")

    chain = chain_of(
        make_plugin("inline", "on_transform", log=calls),
        make_plugin("track", "on_personalize", log=calls, action=personal),
        make_plugin("sign", "on_sign", log=calls),
    )
    ctx = ctx_for(rcpts=("b@example.com", "c@example.com"))
    copies = await process_message(chain, ctx)
    assert calls == [
        ("inline", "on_transform", None),
        ("track", "on_personalize", "b@example.com"),
        ("sign", "on_sign", "b@example.com"),
        ("track", "on_personalize", "c@example.com"),
        ("sign", "on_sign", "c@example.com"),
    ]
    assert [Message(c.data).get("X-For") for c in copies] == ["b@example.com", "c@example.com"]


async def test_a_verdict_for_one_copy_stops_only_that_copy():
    def maybe_reject(ctx: MessageContext) -> None:
        if ctx.recipient == "c@example.com":
            raise RuntimeError("suppressed lookup failed")

    chain = chain_of(
        make_plugin("per_rcpt", "on_personalize", action=maybe_reject), make_plugin("sign", "on_sign")
    )
    copies = await process_message(chain, ctx_for(rcpts=("b@example.com", "c@example.com")))
    assert [c.deliverable for c in copies] == [True, False]
    assert copies[1].verdict is not None and copies[1].verdict.reply().startswith("451 4.3.0")


async def test_a_transform_failure_stops_every_copy():
    chain = chain_of(make_plugin("inline", "on_transform", result=_boom))
    copies = await process_message(chain, ctx_for(rcpts=("b@example.com", "c@example.com")))
    assert [c.deliverable for c in copies] == [False, False]
    assert all(isinstance(c.verdict, TempFail) for c in copies)


async def test_a_hook_cannot_swallow_its_timeout(caplog):
    """``except Exception`` in a plugin must not turn a timeout into "continue"."""
    swallowed: list[str] = []

    def stubborn() -> None:
        try:
            time.sleep(5)
        except Exception as exc:  # what sloppy plugin code does
            swallowed.append(type(exc).__name__)

    chain = chain_of(make_plugin("stubborn", result=stubborn), timeout=0.2)
    start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="smtpgate.chain"):
        verdict = await chain.run("on_message", ctx=ctx_for())
    assert time.monotonic() - start < 2
    assert swallowed == []
    assert isinstance(verdict, TempFail) and "plugin=stubborn" in caplog.text
