"""``smtpgate events prune``: old events go in batches; pending webhooks and the stoplist stay (both
backends: on PostgreSQL one run prunes the events every node wrote)."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pipeline.app.cli import main
from pipeline.app.cli.events import parse_age, parse_date
from pipeline.contract.context import Event
from pipeline.events.retention import prune_events, prune_store

DAY = 86400.0


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["events", "prune", *args])


@pytest.fixture
def eb(backend: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The backend, with CLI runs pointed at it."""
    backend.export_env(monkeypatch)
    return backend


def fill(backend: Any) -> dict[str, int]:
    """Old and new events; an old one with a pending webhook, old ones with finished webhooks,
    and an old hard bounce that put its address on the stoplist. Their ids by name."""
    now = time.time()
    store = backend.event_store()
    ids: dict[str, int] = {}
    for i in range(5):
        ids[f"old{i}"] = store.record_sync(Event("delivered", queue_id=f"Q{i}", recipient=f"r{i}@example.net",
                                                 time=now - 200 * DAY))
    ids["old_pending"] = store.record_sync(Event("opened", queue_id="QP", recipient="p@example.net",
                                                 time=now - 200 * DAY), ["https://hooks.example/a"])
    ids["old_sent"] = store.record_sync(Event("clicked", queue_id="QS", recipient="s@example.net",
                                              time=now - 200 * DAY), ["https://hooks.example/a"])
    ids["old_bounce"] = store.record_sync(Event("bounced", queue_id="QB", recipient="gone@example.net",
                                                time=now - 200 * DAY, data={"dsn": "5.1.1"}))
    ids["new"] = store.record_sync(Event("delivered", queue_id="QN", recipient="n@example.net", time=now - DAY),
                                   ["https://hooks.example/a"])
    outbox = {d["event_id"]: d["id"] for d in store.webhook_deliveries()}
    store.webhook_delivered(outbox[ids["old_sent"]])
    store.close()
    return ids


def rows(backend: Any, sql: str) -> list[tuple[Any, ...]]:
    return backend.fetch(sql, db="events")


def test_older_than_deletes_old_events_but_keeps_pending_webhooks_and_the_stoplist(eb):
    ids = fill(eb)
    result = run("--older-than", "90d")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        result.stdout.splitlines()[0],
        "kept 1 older event(s) whose webhooks are still pending",
    ]
    assert result.stdout.startswith("deleted 7 event(s) recorded before ")
    assert "and 1 finished webhook delivery" in result.output
    assert {r[0] for r in rows(eb, "SELECT id FROM events")} == {ids["old_pending"], ids["new"]}
    assert sorted(rows(eb, "SELECT event_id, state FROM webhook_outbox")) == sorted(
        [(ids["old_pending"], "pending"), (ids["new"], "pending")]
    )
    assert rows(eb, "SELECT address, reason FROM suppression") == [("gone@example.net", "hard bounce")]


def test_dry_run_counts_without_deleting(eb):
    fill(eb)
    result = run("--older-than", "90d", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("would delete 7 event(s)") and "1 finished webhook delivery" in result.output
    assert len(rows(eb, "SELECT id FROM events")) == 9


def test_before_date_and_small_batches_delete_everything_older(eb):
    ids = fill(eb)
    cutoff = datetime.datetime.fromtimestamp(time.time() - 30 * DAY, datetime.UTC).date().isoformat()
    result = run("--before", cutoff, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert f"recorded before {cutoff} 00:00:00 UTC" in result.output
    assert {r[0] for r in rows(eb, "SELECT id FROM events")} == {ids["old_pending"], ids["new"]}


def test_prune_function_reports_counts_and_rejects_a_zero_batch(backend):
    fill(backend)
    store = backend.event_store()
    try:
        result = prune_store(store, time.time() - 90 * DAY, batch=3)
        assert (result.events, result.webhook_rows, result.kept_pending) == (7, 1, 1)
        assert prune_store(store, time.time() - 90 * DAY).events == 0
        with pytest.raises(ValueError):
            prune_store(store, time.time(), batch=0)
    finally:
        store.close()
    with pytest.raises(ValueError):
        prune_events(backend.data_dir / "events.db", time.time(), batch=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give exactly one of --before DATE and --older-than AGE"),
        (("--before", "2020-01-01", "--older-than", "90d"), "give exactly one of"),
        (("--older-than", "90 days"), "--older-than '90 days': expected a positive number and a unit"),
        (("--older-than", "0d"), "expected a positive number"),
        (("--before", "last tuesday"), "--before 'last tuesday': expected a date"),
        (("--before", "2999-01-01"), "that is in the future"),
    ],
)
def test_bad_arguments_are_one_line_errors(data_dir, args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_event_store_is_not_created(data_dir):
    data_dir.mkdir()
    result = run("--older-than", "90d")
    assert result.exit_code == 0 and "no event store, nothing to prune" in result.output
    assert not (data_dir / "events.db").exists()


def test_age_and_date_parsing():
    assert parse_age("90d") == 90 * DAY and parse_age("12H") == 12 * 3600 and parse_age("2w") == 14 * DAY
    assert parse_date("2026-08-01") == datetime.datetime(2026, 8, 1, tzinfo=datetime.UTC).timestamp()
    assert parse_date("2026-08-01T02:00:00+02:00") == parse_date("2026-08-01")


def test_prune_takes_old_finished_messages_out_of_the_message_log(eb):
    eb.data_dir.mkdir(parents=True)
    now = time.time()
    store = eb.event_store()
    for qid, age, result in (("OLD", 200, "delivered"), ("WAITING", 200, "deferred"), ("NEW", 1, "delivered")):
        summary = {"mail_from": "a@shop.example", "subject": qid, "size": 10}
        store.record_sync(Event("accepted", queue_id=qid, recipient="x@example.net", time=now - age * DAY,
                                data={"message": summary}))
        store.record_sync(Event(result, queue_id=qid, recipient="x@example.net", time=now - age * DAY + 1))
    store.close()
    store = eb.event_store()
    try:
        assert prune_store(store, now - 90 * DAY, dry_run=True).messages == 1
    finally:
        store.close()
    result = run("--older-than", "90d", "--batch-size", "1")
    assert result.exit_code == 0 and "deleted 1 message(s) from the message log" in result.output, result.output
    log, log_rcpts = ("messages", "message_recipients") if eb.url is None else ("message_log", "message_log_recipients")
    assert {r[0] for r in rows(eb, f"SELECT queue_id FROM {log}")} == {"WAITING", "NEW"}
    assert {r[0] for r in rows(eb, f"SELECT queue_id FROM {log_rcpts}")} == {"WAITING", "NEW"}
