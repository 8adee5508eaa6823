"""The event store, in both backends (the ``backend`` fixture): durable records, group commit,
suppression policy, statistics."""

from __future__ import annotations

import asyncio
import calendar

import pytest

from pipeline.app.gateway import Gateway
from pipeline.contract.context import Event
from pipeline.events import EventStore, SuppressionPolicy
from pipeline.events.machine import MachineDetector
from pipeline.events.stats import campaign_stats, parse_date, stats_report, timeline, totals
from tests.support.tracking import tracking_config

DAY1 = calendar.timegm((2026, 3, 1, 10, 0, 0))
DAY2 = calendar.timegm((2026, 3, 2, 10, 0, 0))


@pytest.fixture
def store(backend):
    s = backend.event_store()
    yield s
    s.close()


async def test_concurrent_records_share_commits_and_all_survive_reopen(backend):
    store = backend.event_store()
    ids = await asyncio.gather(
        *(store.record(Event("opened", queue_id=f"Q{i}", recipient=f"r{i}@x.net")) for i in range(200))
    )
    assert sorted(ids) == list(range(1, 201))
    store.close()
    reopened = backend.event_store()
    assert reopened.counts_by_type() == {"opened": 200}
    assert [e.event.queue_id for e in reopened.events(limit=3)] == ["Q0", "Q1", "Q2"]
    reopened.close()


async def test_event_keeps_every_field(store):
    e = Event("clicked", queue_id="Q", recipient="Ann@Example.NET", credential="shop", campaign_id="c1",
              letter_id="L9", url="https://x.example/?a=1&b=2", time=DAY1, data={"user_agent": "UA"})
    await store.record(e)
    [got] = store.events()
    assert got.event.recipient == "ann@example.net"  # addresses are compared case-insensitively
    assert (got.event.credential, got.event.campaign_id, got.event.letter_id) == ("shop", "c1", "L9")
    assert got.event.url == e.url and got.event.time == DAY1 and got.event.data == {"user_agent": "UA"}


async def test_hard_bounce_unsubscribe_complaint_suppress_soft_bounce_does_not(store):
    await store.record(Event("bounced", recipient="hard@x.net", credential="shop", data={"status": "5.1.1"}))
    await store.record(Event("bounced", recipient="soft@x.net", credential="shop", data={"status": "4.2.2"}))
    await store.record(Event("bounced", recipient="full@x.net", credential="shop", data={"class": "soft"}))
    await store.record(Event("unsubscribed", recipient="unsub@x.net", credential="shop"))
    await store.record(Event("complained", recipient="spam@x.net", credential="shop"))
    await store.record(Event("delivered", recipient="fine@x.net", credential="shop"))
    # delivery results carry the code as "dsn": a content refusal by a plugin is not a bad address
    await store.record(Event("bounced", recipient="content@x.net", credential="shop", data={"dsn": "5.6.0"}))
    await store.record(Event("bounced", recipient="gone@x.net", credential="shop", data={"dsn": "5.1.1"}))
    suppressed = {(s.address, s.scope, s.reason) for s in store.suppressions()}
    assert suppressed == {
        ("hard@x.net", "shop", "hard bounce"),
        ("gone@x.net", "shop", "hard bounce"),
        ("unsub@x.net", "shop", "unsubscribed"),
        ("spam@x.net", "shop", "complaint"),
    }
    assert store.is_suppressed("HARD@x.net", "shop")
    assert not store.is_suppressed("hard@x.net", "another")


async def test_global_scope_and_disabled_reasons_follow_the_policy(backend):
    store = backend.event_store(SuppressionPolicy(scope="global", unsubscribes=False))
    await store.record(Event("complained", recipient="spam@x.net", credential="shop"))
    await store.record(Event("unsubscribed", recipient="unsub@x.net", credential="shop"))
    assert store.is_suppressed("spam@x.net", "any-credential") and store.is_suppressed("spam@x.net")
    assert not store.is_suppressed("unsub@x.net", "shop")
    store.close()


def test_manual_suppression_add_remove_and_read_only_list(store, backend):
    assert store.suppress("a@x.net") is True
    assert store.suppress("A@X.net") is False  # already there
    assert store.suppress("a@x.net", "shop") is True
    stoplist = backend.suppression_list()
    assert stoplist.contains("a@x.net") and stoplist.contains("a@x.net", "other")
    assert store.unsuppress("a@x.net", "") == 1
    assert not stoplist.contains("a@x.net", "other") and stoplist.contains("a@x.net", "shop")
    assert store.unsuppress("a@x.net") == 1 and store.suppressions() == []
    stoplist.close()


async def _campaign(store: EventStore) -> None:
    """spring: 4 sent, 3 delivered, 1 hard bounce; 2 human openers (3 opens), 1 machine open;
    1 clicker (2 clicks) + 1 scanner click; 1 unsubscribe (posted twice); autumn: 1 sent on day 2."""
    for i in range(4):
        await store.record(Event("accepted", queue_id="Q1", recipient=f"r{i}@x.net", campaign_id="spring", time=DAY1))
    for i in range(3):
        await store.record(Event("delivered", queue_id="Q1", recipient=f"r{i}@x.net", campaign_id="spring", time=DAY1 + 5))
    await store.record(Event("bounced", queue_id="Q1", recipient="r3@x.net", campaign_id="spring", time=DAY1 + 6,
                             data={"status": "5.1.1"}))
    for rcpt, t in (("r0", DAY1 + 100), ("r0", DAY2), ("r1", DAY1 + 200)):
        await store.record(Event("opened", queue_id="Q1", recipient=f"{rcpt}@x.net", campaign_id="spring", time=t))
    await store.record(Event("opened", queue_id="Q1", recipient="r2@x.net", campaign_id="spring", time=DAY1 + 6,
                             data={"machine": True}))
    for t in (DAY1 + 300, DAY1 + 400):
        await store.record(Event("clicked", queue_id="Q1", recipient="r0@x.net", campaign_id="spring", time=t, url="u"))
    await store.record(Event("clicked", queue_id="Q1", recipient="r1@x.net", campaign_id="spring", time=DAY1 + 7,
                             url="u", data={"machine": True}))
    for _ in range(2):
        await store.record(Event("unsubscribed", queue_id="Q1", recipient="r1@x.net", campaign_id="spring", time=DAY1 + 500))
    await store.record(Event("accepted", queue_id="Q2", recipient=None, campaign_id="autumn", time=DAY2,
                             data={"recipients": ["a@x.net", "b@x.net"]}))


async def test_campaign_stats_count_unique_machine_bounces_and_rates(store):
    await _campaign(store)
    rows = {r["campaign"]: r for r in campaign_stats(store)}
    s = rows["spring"]
    assert (s["sent"], s["delivered"], s["bounced"], s["bounced_hard"], s["bounced_soft"]) == (4, 3, 1, 1, 0)
    assert (s["opens"], s["unique_opens"], s["machine_opens"], s["unique_machine_opens"]) == (3, 2, 1, 1)
    assert (s["clicks"], s["unique_clicks"], s["machine_clicks"]) == (2, 1, 1)
    assert s["unsubscribes"] == 1
    assert s["delivery_rate"] == 0.75 and s["bounce_rate"] == 0.25
    assert s["open_rate"] == round(2 / 3, 4) and s["click_rate"] == round(1 / 3, 4)
    assert s["click_to_open_rate"] == 0.5
    assert rows["autumn"]["sent"] == 2  # one accepted event listing two recipients
    assert totals(list(rows.values()))["sent"] == 6


async def test_per_day_rows_and_since_until_filters(store):
    await _campaign(store)
    days = {(r["campaign"], r["day"]): r for r in campaign_stats(store, by_day=True)}
    assert set(days) == {("spring", "2026-03-01"), ("spring", "2026-03-02"), ("autumn", "2026-03-02")}
    assert days[("spring", "2026-03-01")]["opens"] == 2 and days[("spring", "2026-03-02")]["opens"] == 1
    only_day2 = campaign_stats(store, since=parse_date("2026-03-02"))
    assert {r["campaign"]: r["opens"] for r in only_day2} == {"autumn": 0, "spring": 1}
    only_day1 = campaign_stats(store, campaign="spring", until=parse_date("2026-03-01", end=True))
    assert only_day1[0]["opens"] == 2


async def test_timeline_uses_hours_for_short_spans_and_days_for_long(store):
    await _campaign(store)
    tl = timeline(store)
    assert tl["bucket"] == "hour"
    assert sum(tl["series"]["opened"]) == 4 and sum(tl["series"]["delivered"]) == 3
    await store.record(Event("delivered", queue_id="Q3", recipient="z@x.net", time=DAY2 + 10 * 86400))
    tl = timeline(store)
    assert tl["bucket"] == "day" and tl["labels"][0] == "2026-03-01" and sum(tl["series"]["delivered"]) == 4
    assert stats_report(store)["totals"]["delivered"] == 4


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "01/02/2026"])
def test_parse_date_rejects_other_formats(text):
    with pytest.raises(ValueError, match="invalid date"):
        parse_date(text)


def test_machine_detector_by_agent_by_time_and_extra_patterns():
    d = MachineDetector(["MyCorpScanner"], seconds=5)
    assert d.reason("Mozilla/5.0 (compatible; MyCorpScanner/1.0)", 100, None) == "user agent"
    assert d.reason("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15", 100, 97) == "too soon"
    assert d.reason("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15", 100, 90) is None
    assert d.reason("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36", 100, None) is None


async def test_gateway_emit_records_then_calls_on_event_plugins(tmp_path):
    seen: list[str] = []

    class Listener:
        name = "listener"

        from pipeline import hookimpl

        @hookimpl
        def on_event(self, event: Event) -> None:
            seen.append(event.type)

        def __init__(self, config, env) -> None:
            pass

    gw = Gateway(tracking_config(tmp_path / "data"), extra_plugins=[Listener])
    await gw.emit(Event("delivered", queue_id="Q", recipient="a@x.net"))
    assert seen == ["delivered"] and gw.events.counts_by_type() == {"delivered": 1}
    assert gw.counters["events_total:delivered"] == 1
    await gw.stop()


async def test_emit_survives_a_broken_store_unless_strict(tmp_path):
    gw = Gateway(tracking_config(tmp_path / "data"))
    gw.events.close()  # every write now fails
    await gw.emit(Event("delivered", queue_id="Q"))  # logged, not raised
    assert gw.counters["event_store_errors_total"] == 1
    with pytest.raises(Exception, match="closed"):
        await gw.emit(Event("delivered", queue_id="Q"), strict=True)


async def test_on_event_plugins_get_events_without_the_summary_and_a_chain_without_hooks_is_not_called(tmp_path):
    """``on_event`` hooks see an event without the message log's summary; a chain with no such hook
    is not called at all (copying each event without its summary for nobody was 4.7 us an event)."""
    seen: list[dict] = []

    class Listener:
        name = "listener"

        from pipeline import hookimpl

        @hookimpl
        def on_event(self, event: Event) -> None:
            seen.append(dict(event.data))

        def __init__(self, config, env) -> None:
            pass

    gw = Gateway(tracking_config(tmp_path / "data"), extra_plugins=[Listener])
    await gw.emit(Event("accepted", queue_id="Q", recipient="a@x.net", data={"message": {"subject": "s"}, "n": 1}))
    assert seen == [{"n": 1}]
    await gw.stop()

    hookless = Gateway(tracking_config(tmp_path / "other"))  # the default chain: no on_event hook
    assert hookless.chain.calls("on_event") == []

    async def called(event: Event) -> None:
        raise AssertionError("a chain without on_event hooks is not called")

    hookless.chain.emit = called  # type: ignore[method-assign]  # (before the event sink is wired)
    try:
        await hookless.emit(Event("accepted", queue_id="Q", recipient="a@x.net", data={"message": {"subject": "s"}}))
        await hookless.event_sink.committed(Event("delivered", queue_id="Q", recipient="a@x.net"), [])
        assert hookless.counters["events_total:accepted"] == 1 and hookless.counters["events_total:delivered"] == 1
    finally:
        await hookless.stop()
