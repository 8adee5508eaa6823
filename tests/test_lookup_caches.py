"""The look-ups the main process makes per connection, per RCPT and per event answer from memory
while the store is unchanged, and give what asking the store gives after any change by another
connection or process (issue 17, main process per message).

- ``CredentialStore.records`` (every SMTP connection) keeps its answer while credentials.db's
  commit stamp (``CommitStamp``: its WAL-index header) is unchanged; the stamp moves with every
  commit of any connection. (``SuppressionList`` is asked afresh per RCPT: a cache of its answers
  only served an address asked twice between two commits of events.db, a benchmark's pattern.)
- ``new_origins`` counts from a random start per process (reseeded in a forked child).
- ``EventEncoder`` reuses its thread's C encoders, renewed after an error.
- ``GatewayMetrics.observe`` keeps each labelled histogram child.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.accounts.store import CommitStamp, CredentialStore
from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.events import EVENT_TYPES, EventEmitter, SuppressionList
from pipeline.events.encoding import EventEncoder, dumps_compact, dumps_spaced
from pipeline.events.sqlite import SqliteEventStore
from pipeline.events.store import new_origins
from pipeline.tracking.metrics import GatewayMetrics, render_metrics

ROOT = Path(__file__).resolve().parents[1]


def statements(conn: sqlite3.Connection) -> list[str]:
    """Every statement ``conn`` runs from now on."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def smtpgate(data_dir: Path, *args: str) -> str:
    """``smtpgate ARGS`` in a process of its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.app.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SMTPGATE_DATA_DIR": str(data_dir)},
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def summary(records: list[Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (r.name, r.section.kind, r.disabled, r.secret_hash, r.key_id, r.section.webhooks) for r in records
    )


# -- credentials ----------------------------------------------------------------------------------


def test_cached_credential_records_equal_a_fresh_read_on_random_changes_by_another_connection(tmp_path):
    path = tmp_path / "credentials.db"
    cached, other = CredentialStore(path), CredentialStore(path)
    rng = random.Random(17)
    names: list[str] = []
    try:
        for step in range(120):
            action = rng.random()
            if action < 0.3 or not names:
                name = f"c{step}"
                other.add(name, "apikey", options={"webhooks": [f"http://127.0.0.1:9/{step}"]})
                names.append(name)
            elif action < 0.5:
                other.set_disabled(rng.choice(names), rng.random() < 0.5)
            elif action < 0.6:
                other.rotate(rng.choice(names))
            elif action < 0.7:
                name = names.pop(rng.randrange(len(names)))
                other.remove(name)
            elif action < 0.8:  # a change through the caching store itself
                cached.set_disabled(rng.choice(names), rng.random() < 0.5)
            # else: no change, the cache answers
            fresh = CredentialStore(path)
            try:
                assert summary(cached.records()) == summary(fresh.records())
            finally:
                fresh.close()
    finally:
        cached.close()
        other.close()


def test_credential_records_are_not_read_again_until_the_file_changes(tmp_path):
    path = tmp_path / "credentials.db"
    store = CredentialStore(path)
    store.add("office", "ip", networks=["127.0.0.0/8"])
    try:
        first = store.records()
        ran = statements(store._conn)
        for _ in range(5):
            assert store.records() is first
        assert ran == []  # neither the rows nor PRAGMA data_version: the commit stamp said unchanged
        other = CredentialStore(path)
        other.set_disabled("office")
        other.close()
        assert [r.disabled for r in store.records()] == [True]
        assert any("FROM credentials" in s for s in ran)
    finally:
        store.close()


def test_a_credential_disabled_by_another_process_is_seen_at_the_next_cached_look_up(data_dir):
    store = CredentialStore(data_dir / "credentials.db")
    store.add("office", "ip", networks=["127.0.0.0/8"])
    try:
        assert [r.disabled for r in store.records()] == [False]
        assert [r.disabled for r in store.records()] == [False]  # from the cache
        smtpgate(data_dir, "credentials", "disable", "office")
        assert [r.disabled for r in store.records()] == [True]
        smtpgate(data_dir, "credentials", "enable", "office")
        assert [r.disabled for r in store.records()] == [False]
    finally:
        store.close()


def test_without_a_commit_stamp_credential_records_ask_data_version_as_before(tmp_path):
    path = tmp_path / "credentials.db"
    store = CredentialStore(path)
    store.add("office", "ip", networks=["127.0.0.0/8"])
    try:
        store._commits.stamp = lambda: None  # type: ignore[union-attr,method-assign]  # no -shm to read
        first = store.records()
        ran = statements(store._conn)
        assert store.records() is first
        assert ran == ["PRAGMA data_version"]
        other = CredentialStore(path)
        other.remove("office")
        other.close()
        assert store.records() == []
    finally:
        store.close()


def test_each_credential_of_a_record_equals_building_it_and_is_its_own(tmp_path):
    rng = random.Random(5)
    store = CredentialStore(tmp_path / "credentials.db")
    try:
        for i in range(40):
            options = {
                "features": {rng.choice(["click_tracking", "open_pixel", "dkim"]): rng.random() < 0.5},
                "locked": rng.sample(["click_tracking", "open_pixel", "dkim"], rng.randrange(3)),
                "sandbox": rng.random() < 0.5,
                "allowed_sender_domains": rng.sample(["a.test", "b.test"], rng.randrange(3)),
                "max_message_size": rng.choice([None, 1000, 10**7]),
                "max_recipients": rng.choice([None, 5]),
                "messages_per_minute": rng.choice([None, 60]),
                "egress": rng.choice([None, "pool-a"]),
                "webhooks": [f"http://127.0.0.1:9/{i}"] if rng.random() < 0.5 else [],
            }
            kind = rng.choice(["ip", "apikey"])
            store.add(f"c{i}", kind, networks=["10.0.0.0/8"] if kind == "ip" else [], options=options)
        for record in store.records():
            first, second = record.credential(), record.credential()
            assert first == second == record.section.to_credential()
            assert first is not second and first.features is not second.features
            first.features["dkim"] = not first.features.get("dkim", False)  # a session changes its own
            first.name = "changed"
            assert record.credential() == record.section.to_credential()
    finally:
        store.close()


def test_a_database_not_in_wal_mode_gets_no_commit_stamp(tmp_path):
    rollback = sqlite3.connect(tmp_path / "rollback.db")
    rollback.execute("PRAGMA journal_mode=DELETE")
    (tmp_path / "rollback.db-shm").write_bytes(bytes(64))  # a stale file proves nothing
    assert CommitStamp.of(rollback, tmp_path / "rollback.db") is None
    wal = sqlite3.connect(tmp_path / "wal.db")
    wal.execute("PRAGMA journal_mode=WAL")
    wal.execute("CREATE TABLE t (x)")
    probe = CommitStamp.of(wal, tmp_path / "wal.db")
    assert probe is not None and probe.stamp() is not None
    probe.close()
    rollback.close()
    wal.close()


# -- suppression ----------------------------------------------------------------------------------


def test_an_address_suppressed_by_another_process_is_refused_at_the_next_look_up(data_dir):
    path = data_dir / "events.db"
    store = SqliteEventStore(path)  # the gateway's own store keeps the file open, as when serving
    stoplist = SuppressionList(path)
    try:
        assert stoplist.reason("gone@example.net") is None
        smtpgate(data_dir, "suppression", "add", "gone@example.net", "--reason", "complaint")
        assert stoplist.reason("gone@example.net") == "complaint"
        smtpgate(data_dir, "suppression", "remove", "gone@example.net")
        assert stoplist.reason("gone@example.net") is None
    finally:
        stoplist.close()
        store.close()


# -- origins --------------------------------------------------------------------------------------


def _child_origins(conn: Any) -> None:
    conn.send(new_origins(50))
    conn.close()


def test_origins_are_unique_ordered_and_differ_in_a_forked_child():
    keys = [k for _ in range(200) for k in new_origins(3)]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    assert keys == sorted(keys)  # later keys sort after earlier ones (time first, then the counter)
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_child_origins, args=(child,))
    proc.start()
    theirs = parent.recv()
    proc.join()
    ours = new_origins(50)
    low = {k[12:] for k in ours}
    assert not low & {k[12:] for k in theirs}  # the child counts from a start of its own


# -- encoding -------------------------------------------------------------------------------------


def test_events_encoded_after_an_encoding_error_equal_json_dumps():
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    bad = Event(EventType.ACCEPTED, queue_id="Q1", recipient="a@example.net", data={"message": loop})
    with pytest.raises(ValueError):
        EventEncoder().encode(bad)
    del loop["self"]  # the same objects, no longer circular: no marker of the failed run may remain
    for encoder in (EventEncoder(), EventEncoder()):
        event = Event(
            EventType.ACCEPTED, queue_id="Q1", recipient="a@example.net", data={"message": loop, "n": 1}
        )
        text, columns = encoder.encode(event)
        assert text == json.dumps(event.to_record(), default=str)
        assert columns.copy == json.dumps(loop, default=str)
        assert columns.data == json.dumps({"n": 1}, separators=(",", ":"))


def _generated(rng: random.Random, depth: int = 0) -> Any:
    """A value of the kinds event data holds, and some only ``default=str`` can encode."""
    scalars = [
        lambda: rng.choice(["", "plain", "caf\u00e9 \u2603", 'q"uote\\, : x', "\x00\n\t", "\U0001f600"]),
        lambda: rng.randint(-(10**20), 10**20),
        lambda: rng.choice([0.1, -2.5e-300, 1e300, float("nan"), float("inf"), -float("inf")]),
        lambda: rng.choice([True, False, None]),
        lambda: rng.choice([Path("/tmp/x"), EventType.DELIVERED, b"bytes", frozenset({1})]),
    ]
    if depth < 3 and rng.random() < 0.4:
        if rng.random() < 0.5:
            return [_generated(rng, depth + 1) for _ in range(rng.randrange(4))]
        return {
            rng.choice(["a", "b", "c\u00e9", "d e"]) + str(i): _generated(rng, depth + 1)
            for i in range(rng.randrange(4))
        }
    return rng.choice(scalars)()


def test_the_threads_json_encoders_equal_json_dumps_on_generated_values_and_after_errors():
    rng = random.Random(9)
    for step in range(2000):
        value = _generated(rng)
        if step % 97 == 0:  # an error in between: the same objects, then others, encode as json.dumps does
            loop: list[Any] = [value]
            loop.append(loop)
            with pytest.raises(ValueError):
                dumps_compact(loop)
            with pytest.raises(ValueError):
                dumps_spaced({"x": loop})
            loop.pop()
            assert dumps_compact(loop) == json.dumps(loop, separators=(",", ":"), default=str)
            assert dumps_spaced({"x": loop}) == json.dumps({"x": loop}, default=str)
        assert dumps_spaced(value) == json.dumps(value, default=str)
        assert dumps_compact(value) == json.dumps(value, separators=(",", ":"), default=str)


def test_events_are_counted_under_the_same_keys_as_before():
    emitter = EventEmitter.__new__(EventEmitter)  # only its counting is exercised
    emitter.metrics = collections.Counter()  # type: ignore[assignment]
    expected: collections.Counter[str] = collections.Counter()
    kinds: list[Any] = [*EventType, *(str(t) for t in EventType), "custom", "Delivered", ""]
    for kind in random.Random(1).choices(kinds, k=300):
        emitter._count(Event(kind, queue_id="Q1"))
        expected[f"events_total:{kind if kind in EVENT_TYPES else 'other'}"] += 1  # the former computation
    assert emitter.metrics == expected


# -- metrics --------------------------------------------------------------------------------------


def test_observations_through_kept_children_equal_labelling_each_time():
    rng = random.Random(3)
    kept, reference = GatewayMetrics(), GatewayMetrics()
    for _ in range(500):
        seconds = rng.choice([0.0001, 0.003, 0.2, 7.0, rng.random()])
        if rng.random() < 0.3:
            kept.observe("delivery_latency_seconds", seconds)
            reference._histograms["delivery_latency_seconds"].observe(seconds)
        else:
            labels = {
                "phase": rng.choice(["process", "admit"]),
                "plugin": rng.choice(["css", "dkim", "pixel"]),
            }
            if rng.random() < 0.5:
                labels = dict(reversed(list(labels.items())))  # the same child, named in another order
            kept.observe("plugin_latency_seconds", seconds, **labels)
            reference._histograms["plugin_latency_seconds"].labels(**labels).observe(seconds)

    def exposition(metrics: GatewayMetrics) -> list[bytes]:
        """The scrape without the ``_created`` lines (each child's creation time)."""
        return [line for line in render_metrics(metrics)[0].splitlines() if b"_created" not in line]

    assert exposition(kept) == exposition(reference)
    assert any(b'plugin="dkim"' in line for line in exposition(kept))
