"""The event outbox path encodes a message's events once and writes events.db with fewer statements
(issue 17): what it stores must be what the per-event encoding and the previous writes stored.

Pinned here: each outbox row's JSON is ``json.dumps(event.to_record(), default=str)`` byte for byte
(for a 100-recipient message, and for arbitrary events); the events.db columns handed to the
forwarder are the ones the event store encodes itself; and the rows a 100-recipient message leaves
in events.db (events, message log, metadata, webhook deliveries, stoplist), whether its events
reach events.db from memory or read back from spool.db after a restart, equal column by column
the rows the previous code (kept below as the reference) wrote for the same events.
"""

from __future__ import annotations

import collections
import datetime
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.chain.accept import event_for, message_summary
from pipeline.chain.runner import Trace, TraceEntry
from pipeline.config import Config, parse_config
from pipeline.contract.context import Credential, Event, MessageContext, Session
from pipeline.contract.message import Message
from pipeline.contract.vocabulary import EventType, RecipientState
from pipeline.delivery.results import OutboxResults, _rows, encode_items, new_origins
from pipeline.events import EventEmitter
from pipeline.events.encoding import _SPLICE, LOGGED_APART, EventEncoder
from pipeline.events.sqlite import SqliteEventStore
from pipeline.events.store import SuppressionPolicy, bounce_class, utc_day
from pipeline.ports import RecipientOutcome
from pipeline.spool.sqlite import SqliteSpool

RAW = (b"From: Shop <app@example.com>\r\nTo: user@example.org\r\nSubject: Your order \xc3\xa9\r\n"
       b"Message-Id: <enc.1@example.com>\r\n\r\n" + b"Hello.\r\n" * 50)
RECIPIENTS = [f"User{i}@Example.org" for i in range(100)]
WEBHOOK = "https://hooks.example.net/smtpgate"


def old_column(event: Event) -> str:
    return json.dumps({k: v for k, v in event.data.items() if k != "message"}, separators=(",", ":"), default=str)


def old_copy(event: Event) -> str | None:
    copy = event.data.get("message")
    return json.dumps(copy, default=str) if isinstance(copy, Mapping) else None


def message_events(rcpts: Sequence[str] = RECIPIENTS) -> tuple[MessageContext, list[Event], list[Event]]:
    """A message's accepted events (as the accept step builds them: one summary shared by all) and
    its delivery results' events (as the scheduler builds them: a copy log each), one a hard bounce."""
    session = Session(peer=("192.0.2.7", 41000), listener="smtp", helo="client.example.com")
    ctx = MessageContext(message=Message(RAW, "app@example.com", list(rcpts)), session=session,
                         credential=Credential("shop"), campaign_id="spring", letter_id="l-1",
                         tags=["news", "é"], metadata={"user": 42, "plan": "é"})
    trace = Trace(entries=[TraceEntry("on_message", f"plugin{i}", "continue", 0.01 * i) for i in range(5)])
    summary = message_summary(ctx, RAW, trace)
    accepted = [event_for("accepted", ctx, r, {"message": summary}) for r in rcpts]
    results = []
    for i, r in enumerate(rcpts):
        state = EventType.BOUNCED if i == 3 else EventType.DELIVERED
        results.append(Event(
            type=state, queue_id=ctx.queue_id, recipient=r, credential="shop", campaign_id="spring",
            letter_id="l-1", tags=tuple(ctx.tags), metadata=dict(ctx.metadata),
            data={"dsn": "5.1.1" if i == 3 else "2.0.0", "reply": "550 no such user" if i == 3 else "250 ok",
                  "relay": "mx.example.org:25", "tls": True, "attempts": 1, "delay": round(0.1 * i, 3),
                  "on": datetime.date(2026, 12, 3),  # not JSON: written as its str()
                  "message": {"trace": [{"plugin": "dkim_sign", "ms": 0.5}], "headers": [["To", r]]}},
        ))
    return ctx, accepted, results


def test_outbox_rows_of_a_100_recipient_message_are_each_event_encoded_whole():
    _, accepted, results = message_events()
    for events in (accepted, results):
        urls = [[WEBHOOK] for _ in events]
        items = encode_items(events, new_origins(len(events)), urls)
        rows = _rows(items)
        assert [event for _, event, _ in rows] == [json.dumps(e.to_record(), default=str) for e in events]
        assert [u for _, _, u in rows] == [json.dumps([WEBHOOK])] * len(events)
        assert [cols.data for *_, cols in items] == [old_column(e) for e in events]
        assert [cols.copy for *_, cols in items] == [old_copy(e) for e in events]
        assert len({origin for origin, _, _ in rows}) == len(events)


_key = st.text(max_size=6)
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.just(_SPLICE), st.dates(), st.sampled_from(list(EventType)),
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(_key, inner, max_size=3),
                            st.dictionaries(st.integers(), inner, max_size=2)),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    shared=st.one_of(st.dictionaries(_key, _value, max_size=4), st.lists(_value, max_size=3), _value),
    rest=st.lists(st.dictionaries(_key, _value, max_size=3), min_size=1, max_size=4),
    share=st.booleans(),
    tags=st.lists(st.text(max_size=4), max_size=2),
    metadata=st.dictionaries(_key, _value, max_size=2),
    recipient=st.one_of(st.none(), st.text(max_size=10)),
)
def test_any_events_encode_to_what_json_dumps_gives(shared, rest, share, tags, metadata, recipient):
    """Whatever the events hold (a shared message, the splice marker itself, NaN, dates, non-string
    keys, tuples), the encoder's text and columns are what ``json.dumps`` gives for each event."""
    events = []
    for i, data in enumerate(rest):
        if share:
            data = {**data, "message": shared}
        events.append(Event(type=EventType.ACCEPTED if i % 2 else "custom", queue_id="q1", recipient=recipient,
                            time=1.5 + i, data=data, tags=tuple(tags), metadata=metadata))
    encoder = EventEncoder()
    for event in events:
        text, cols = encoder.encode(event)
        assert text == json.dumps(event.to_record(), default=str)
        assert cols.data == old_column(event)
        assert cols.copy == old_copy(event)


@settings(max_examples=300, deadline=None)
@given(
    head=st.tuples(st.one_of(st.none(), st.text(max_size=6)), st.one_of(st.none(), st.text(max_size=6)),
                   st.one_of(st.none(), st.text(max_size=6)), st.integers(0, 10**7)),
    rest=st.dictionaries(_key.filter(lambda k: k not in LOGGED_APART), _value, max_size=4),
    recipients=st.integers(1, 3),
)
def test_a_summary_and_its_message_log_info_come_from_one_encode_as_json_dumps_gives_them(head, rest, recipients):
    """An accepted summary (the four keys the message log keeps in columns, then the rest): the
    event's text is what ``json.dumps`` gives for the whole event, and the info column is what it
    gives for the rest, for every recipient's event sharing the summary; any other message: no info."""
    summary = dict(zip(LOGGED_APART, head, strict=True)) | rest
    encoder = EventEncoder()
    for i in range(recipients):
        event = Event(type=EventType.ACCEPTED, queue_id="q1", recipient=f"r{i}@example.org", time=1.5,
                      data={"message": summary})
        text, cols = encoder.encode(event)
        assert text == json.dumps(event.to_record(), default=str)
        assert cols.copy == json.dumps(summary, default=str)
        assert cols.info == (json.dumps(rest, default=str) if rest else None)
    reordered = {"size": 1, **dict(zip(LOGGED_APART[:3], head[:3], strict=True)), "client_ip": "192.0.2.1"}
    _, cols = EventEncoder().encode(Event(type=EventType.ACCEPTED, queue_id="q2", data={"message": reordered}))
    assert cols.info is None  # not in the summary's order: the message log encodes its info itself


def test_the_accept_step_s_summary_gives_the_message_log_its_info_from_the_one_encode():
    """message_summary puts the log's own columns first, so the outbox's encode also yields ``info``
    (were that order lost, the events writer would silently encode every summary twice again)."""
    _, accepted, _ = message_events()
    summary = accepted[0].data["message"]
    assert tuple(summary)[: len(LOGGED_APART)] == LOGGED_APART
    _, cols = EventEncoder().encode(accepted[0])
    assert cols.info == json.dumps({k: v for k, v in summary.items() if k not in LOGGED_APART}, default=str)


def test_origins_are_unique_hex_keys_that_sort_in_the_order_they_were_made():
    """32 hex digits like ``uuid4().hex``; a batch's keys are consecutive and a later batch's sort
    after it (the origin indexes are appended to), and no two are the same."""
    first = new_origins(100)
    time.sleep(0.002)
    second = new_origins(100)
    keys = first + second
    assert all(len(k) == 32 and int(k, 16) >= 0 and k == k.lower() for k in keys)
    assert len(set(keys)) == 200 and first == sorted(first) and min(second) > max(first)
    assert len({k for _ in range(200) for k in new_origins(3)}) == 600


def test_utc_day_is_what_gmtime_gives():
    for ts in (0.0, -0.5, -86400.0, 86399.999, 86400.0, 1_764_800_000.25, 1_764_806_399.9999, 4_102_444_800):
        assert utc_day(ts) == time.strftime("%Y-%m-%d", time.gmtime(ts))


# -- events.db: the previous writes, as the reference ---------------------------------------------

def _norm(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


def reference_write(cur: sqlite3.Cursor, event: Event, urls: Sequence[str], origin: str) -> None:
    """What ``EventStoreBase.write_event_once`` wrote before issue 17's changes, statement by statement
    (``RETURNING``, every message-log and metadata insert, each column encoded from the event)."""
    now = time.time()
    cur.execute(
        "INSERT INTO events (type, time, day, queue_id, recipient, credential, campaign_id,"
        " letter_id, url, machine, bounce_class, weight, data, origin)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO NOTHING RETURNING id",
        (str(event.type), event.time, time.strftime("%Y-%m-%d", time.gmtime(event.time)), event.queue_id,
         _norm(event.recipient) if event.recipient else None, event.credential, event.campaign_id,
         event.letter_id, event.url, 1 if event.data.get("machine") else 0, bounce_class(event), 1,
         old_column(event), origin),
    )
    rows = cur.fetchall()
    if not rows:
        return
    event_id = rows[0][0]
    rcpt = _norm(event.recipient or "")
    if event.type == EventType.ACCEPTED:
        summary = event.data.get("message")
        if isinstance(summary, Mapping):
            mail_from = str(summary.get("mail_from") or "")
            info = {k: v for k, v in summary.items() if k not in ("mail_from", "subject", "message_id", "size")}
            message_id = summary.get("message_id")
            cur.execute(
                "INSERT INTO messages (queue_id, accepted_at, mail_from, sender, subject, message_id,"
                " credential, campaign_id, letter_id, size, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (event.queue_id, event.time, mail_from, _norm(mail_from), summary.get("subject"),
                 _norm(str(message_id)) if message_id else None, event.credential, event.campaign_id,
                 # info is spaced since the outbox's one encode of the summary gives it (json.loads reads either)
                 event.letter_id, int(summary.get("size") or 0), json.dumps(info, default=str)),
            )
        cur.execute("INSERT INTO message_recipients (queue_id, recipient, state, updated_at)"
                    " VALUES (?, ?, 'queued', ?) ON CONFLICT DO NOTHING", (event.queue_id, rcpt, event.time))
    else:
        cur.execute("UPDATE message_recipients SET state = ?, updated_at = ?, copy = COALESCE(?, copy)"
                    " WHERE queue_id = ? AND recipient = ?",
                    (str(event.type), event.time, old_copy(event), event.queue_id, rcpt))
    if event.tags or event.metadata:
        cur.execute("INSERT INTO message_meta (queue_id, tags, metadata) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (event.queue_id, json.dumps(list(event.tags)), json.dumps(event.metadata, default=str)))
    for url in urls:
        cur.execute("INSERT INTO webhook_outbox (event_id, url, next_attempt, updated_at) VALUES (?, ?, ?, ?)",
                    (event_id, url, now, now))
    reason = SuppressionPolicy().reason(event)
    if reason:
        cur.execute("INSERT INTO suppression (address, scope, reason, time, event_id) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING", (rcpt, event.credential or "", reason, event.time, event_id))


TABLES = {
    "events": "SELECT * FROM events ORDER BY id",
    "messages": "SELECT * FROM messages ORDER BY id",
    "message_recipients": "SELECT * FROM message_recipients ORDER BY queue_id, recipient",
    "message_meta": "SELECT * FROM message_meta ORDER BY queue_id",
    "suppression": "SELECT * FROM suppression ORDER BY address, scope",
    # next_attempt and updated_at are the clock at the write
    "webhook_outbox": "SELECT id, event_id, url, state, attempts, last_error FROM webhook_outbox ORDER BY id",
}


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        conn.close()


def same_rows(got: dict[str, list[tuple[Any, ...]]], want: dict[str, list[tuple[Any, ...]]]) -> None:
    """Table by table, row by row, column by column."""
    assert got.keys() == want.keys()
    for table in want:
        assert len(got[table]) == len(want[table]), table
        for g, w in zip(got[table], want[table], strict=True):
            assert len(g) == len(w)
            for col, (a, b) in enumerate(zip(g, w, strict=True)):
                assert a == b and type(a) is type(b), (table, col, a, b)


def outcomes_of(queue_id: str, results: list[Event]) -> list[RecipientOutcome]:
    return [RecipientOutcome(queue_id, str(e.recipient),
                             RecipientState.BOUNCED if e.type == EventType.BOUNCED else RecipientState.DELIVERED,
                             1, str(e.data["dsn"]), str(e.data["reply"])) for e in results]


async def test_events_db_rows_of_a_100_recipient_message_equal_the_previous_writes_from_memory_and_from_disk(tmp_path):
    """One message, 100 recipients: its accepted events (committed with it) and its results' events
    reach events.db from memory with the outbox's encoded columns; the same events committed to
    another spool.db and forwarded after a "restart" are read back from disk; both events.db files
    equal, column by column, what the previous per-event writes stored for the same events."""
    config = parse_config({"webhooks": {"urls": [WEBHOOK]}})
    ctx, accepted, results = message_events()
    # from memory, as the gateway runs
    spool, store = SqliteSpool(tmp_path / "a" / "spool.db"), SqliteEventStore(tmp_path / "a" / "events.db")
    outbox = OutboxResults(spool, store, EventEmitter(store, config, collections.Counter()), linger=3600)
    try:
        assert await outbox.drain() == 0  # caught up with spool.db: from memory from now on
        await outbox.accepts().enqueue(ctx, RAW, RECIPIENTS, accepted)
        spool.claim(1000, lease=60)
        await outbox.record(outcomes_of(ctx.queue_id, results), results)
        assert await outbox.drain() == 200  # everything lingered (linger=3600): forwarded now, together
    finally:
        await outbox.close()
        spool.close()
        store.close()
    memory = dump(tmp_path / "a" / "events.db")
    origins = [row[-1] for row in memory["events"]]
    assert len(set(origins)) == 200 and all(len(o) == 32 and int(o, 16) >= 0 for o in origins)

    # from disk: the outbox rows committed, the forwarder started afterwards
    spool, store = SqliteSpool(tmp_path / "b" / "spool.db"), SqliteEventStore(tmp_path / "b" / "events.db")
    try:
        await spool.enqueue(ctx, RAW, RECIPIENTS, _rows(encode_items(accepted, origins[:100], [[WEBHOOK]] * 100)))
        spool.claim(1000, lease=60)
        await spool.record(outcomes_of(ctx.queue_id, results),
                           _rows(encode_items(results, origins[100:], [[WEBHOOK]] * 100)))
        restarted = OutboxResults(spool, store, EventEmitter(store, config, collections.Counter()))
        assert await restarted.drain() == 200
        await restarted.close()
    finally:
        spool.close()
        store.close()

    # the reference: the previous code's statements, one transaction per event
    reference = tmp_path / "ref" / "events.db"
    SqliteEventStore(reference).close()  # the schema
    conn = sqlite3.connect(reference, isolation_level=None)
    try:
        cur = conn.cursor()
        for event, origin in zip(accepted + results, origins, strict=True):
            cur.execute("BEGIN")
            reference_write(cur, event, [WEBHOOK], origin)
            cur.execute("COMMIT")
    finally:
        conn.close()
    want = dump(reference)
    assert len(want["events"]) == 200 and len(want["messages"]) == 1 and len(want["suppression"]) == 1
    assert len(want["webhook_outbox"]) == 200 and len(want["message_meta"]) == 1
    same_rows(memory, want)
    same_rows(dump(tmp_path / "b" / "events.db"), want)


async def test_a_100_recipient_message_costs_one_statement_per_event_row_in_events_db(tmp_path):
    """The forwarder's batch: one savepoint for all, one insert per event and per log row, the
    message's log row and metadata once (not once per recipient), no ``RETURNING``."""
    spool, store = SqliteSpool(tmp_path / "spool.db"), SqliteEventStore(tmp_path / "events.db")
    outbox = OutboxResults(spool, store, EventEmitter(store, Config(), collections.Counter()), linger=3600)
    statements: list[str] = []
    try:
        assert await outbox.drain() == 0
        ctx, accepted, _ = message_events()
        await outbox.accepts().enqueue(ctx, RAW, RECIPIENTS, accepted)
        store._conn.set_trace_callback(statements.append)
        await outbox.drain()
        store._conn.set_trace_callback(None)
    finally:
        await outbox.close()
        spool.close()
        store.close()
    counts = collections.Counter(" ".join(s.split()[:3]) for s in statements)
    assert counts["INSERT INTO events"] == 100 and counts["INSERT INTO message_recipients"] == 100
    assert counts["INSERT INTO messages"] == 1 and counts["INSERT INTO message_meta"] == 1
    assert counts["SAVEPOINT items"] == 1 and "SAVEPOINT item" not in [s.strip() for s in statements]
    assert not any("RETURNING" in s for s in statements)


def test_stoplist_look_up_sees_another_connection_s_entry_at_once_in_its_scopes(tmp_path):
    """The RCPT look-up (one seek for every scope of the address) sees an entry another connection
    (another process: the CLI, the tracking service) committed a moment ago; only the global scope
    and the credential's own apply, and a hard bounce wins."""
    from pipeline.events import SuppressionList

    writer = SqliteEventStore(tmp_path / "events.db")
    stoplist = SuppressionList(tmp_path / "events.db")
    try:
        assert stoplist.reason("a@example.org", "shop") is None
        writer.suppress("a@example.org", "other", "unsubscribed")
        assert stoplist.reason("A@Example.org", "shop") is None and not stoplist.contains("a@example.org", "shop")
        assert stoplist.reason("a@example.org", "other") == "unsubscribed"
        assert stoplist.reason("a@example.org") is None
        writer.suppress("a@example.org", "shop", "complaint")
        assert stoplist.reason("a@example.org", "shop") == "complaint" and stoplist.contains("<a@example.org>", "shop")
        writer.suppress("a@example.org", "", "manual")
        assert stoplist.reason("a@example.org", "shop") == "manual"  # the global entry comes first
        assert stoplist.reason("a@example.org", "nobody") == "manual" and stoplist.contains("a@example.org")
        writer.suppress("a@example.org", "shop", "hard bounce")  # already there for shop: kept as it was
        writer.unsuppress("a@example.org", "shop")
        writer.suppress("a@example.org", "shop", "hard bounce")
        assert stoplist.reason("a@example.org", "shop") == "hard bounce"
        assert stoplist.reason("a@example.org", "other") == "manual"
    finally:
        stoplist.close()
        writer.close()
