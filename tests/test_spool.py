"""The spool, in both backends (the ``backend`` fixture): durable enqueue, claims with leases, recovery,
results, queue operations; then what only a shared PostgreSQL spool must do (several nodes)."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time

import pytest

from pipeline.contract.context import Credential, MessageContext
from pipeline.contract.message import Message
from pipeline.contract.vocabulary import RecipientState
from pipeline.ports import RecipientOutcome, Spool

RAW = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\n\r\nbody\r\n"


async def put(spool: Spool, rcpts: list[str], **kw) -> str:
    ctx = MessageContext(message=Message(RAW, "a@example.org", rcpts), **kw)
    await spool.enqueue(ctx, RAW, rcpts)
    return ctx.queue_id


async def test_enqueue_is_committed_before_return_and_visible_to_another_connection(backend):
    spool = backend.spool()
    qid = await put(spool, ["b@example.net"], credential=Credential("app", features={"dkim": True}),
                    campaign_id="c1")
    # another connection sees only committed data
    assert bytes(backend.fetch("SELECT data FROM messages WHERE queue_id=?", (qid,))[0][0]) == RAW
    spool.close()
    reopened = backend.spool()
    [msg] = reopened.claim(10, lease=60)
    assert msg.context["credential"]["name"] == "app" and msg.context["campaign_id"] == "c1"
    assert msg.recipients == ["b@example.net"] and msg.data == RAW
    reopened.close()


async def test_concurrent_enqueues_share_commits_and_all_land(backend):
    spool = backend.spool()
    woke = []
    spool.add_listener(lambda: woke.append(1))
    qids = await asyncio.gather(*(put(spool, [f"r{i}@example.net"]) for i in range(50)))
    assert spool.count() == 50 and len(set(qids)) == 50
    assert 1 <= len(woke) < 50  # batched: fewer commits than messages
    spool.close()


async def test_claim_leases_and_expired_lease_is_claimed_again(backend):
    spool = backend.spool()
    qid = await put(spool, ["x@example.net", "y@example.net"])
    now = time.time()
    [msg] = spool.claim(10, lease=30, now=now)
    assert sorted(msg.recipients) == ["x@example.net", "y@example.net"]
    assert spool.claim(10, lease=30, now=now + 1) == []  # leased
    assert spool.claim(10, lease=30, now=now + 31, exclude=frozenset({(qid, "x@example.net")}))[0].recipients == [
        "y@example.net"
    ]
    spool.close()


async def test_recover_requeues_what_no_live_node_holds(backend):
    spool = backend.spool()
    qid = await put(spool, ["x@example.net"])
    spool.claim(10, lease=3600)
    assert spool.claim(10, lease=3600) == []
    # SQLite: one node per spool file, so everything in processing was the previous run's.
    # PostgreSQL: other nodes' leases are live; only expired ones come back.
    if backend.kind == "sqlite":
        assert spool.recover() == 1
    else:
        assert spool.recover() == 0
        spool.release(qid, ["x@example.net"])
        assert spool.claim(10, lease=0.05)  # a lease that is about to run out (a node that died)
        time.sleep(0.1)
        assert spool.recover() == 1
    assert len(spool.claim(10, lease=3600)) == 1
    spool.close()


async def test_deferred_waits_for_next_attempt_and_final_states_remove_message(backend):
    spool = backend.spool()
    qid = await put(spool, ["x@example.net", "y@example.net"])
    spool.claim(10, lease=60)
    now = time.time()
    await spool.record([
        RecipientOutcome(qid, "x@example.net", RecipientState.DELIVERED, 1, "2.0.0", "250 ok"),
        RecipientOutcome(qid, "y@example.net", RecipientState.DEFERRED, 1, "4.0.0", "451 later", next_attempt=now + 100),
    ])
    assert spool.claim(10, lease=60, now=now) == []
    assert spool.next_due() == now + 100
    assert spool.retry(qid) == 1
    [msg] = spool.claim(10, lease=60)
    assert msg.recipients == ["y@example.net"] and msg.attempts == {"y@example.net": 1}
    await spool.record([RecipientOutcome(qid, "y@example.net", RecipientState.BOUNCED, 2, "5.1.1", "550 no")])
    assert spool.show(qid) is None and spool.count() == 0
    spool.close()


async def test_release_hands_back_and_delete_removes(backend):
    spool = backend.spool()
    qid = await put(spool, ["x@example.net"])
    [msg] = spool.claim(10, lease=3600)
    spool.release(qid, msg.recipients)
    assert spool.show(qid)["recipients"][0]["state"] == "queued"
    assert spool.delete(qid) and not spool.delete(qid)
    assert spool.list_recipients() == []
    spool.close()


async def test_a_claim_whose_reply_was_lost_is_handed_back_by_its_lease_until(backend):
    """A claim can commit with its reply lost (the connection died in an outage): the scheduler then
    hands back exactly the rows leased until that claim's ``now + lease``, and no one else's."""
    spool = backend.spool()
    await put(spool, ["x@example.net"])
    await put(spool, ["y@example.net"])
    now = time.time()
    lost = spool.claim(1, lease=300, now=now)[0].queue_id  # "failed" as far as the caller knows
    other = spool.claim(1, lease=300, now=now + 1)[0].queue_id  # another claim's rows: left alone
    assert spool.release_leases([now + 300]) == 1
    states = {q: spool.show(q)["recipients"][0]["state"] for q in (lost, other)}
    assert states == {lost: "queued", other: "processing"}
    [again] = spool.claim(10, lease=300)
    assert again.queue_id == lost
    spool.close()


# -- several nodes on one PostgreSQL ------------------------------------------------------------


@pytest.fixture
def pg_spools(pg_url):
    """Two spool objects (two nodes' pools) on one PostgreSQL database."""
    from tests.support.storage_backends import Backend

    b = Backend("postgres", None, pg_url)  # type: ignore[arg-type]
    a, c = b.spool(), b.spool()
    yield a, c
    a.close()
    c.close()


async def test_two_nodes_claim_disjoint_recipients_with_skip_locked(pg_spools):
    a, b = pg_spools
    qids = [await put(a if i % 2 else b, [f"r{i}@example.net"]) for i in range(40)]
    got: dict[str, list[str]] = {"a": [], "b": []}

    def drain(name: str, spool) -> None:
        while batch := spool.claim(3, lease=60):
            got[name] += [m.queue_id for m in batch]

    threads = [threading.Thread(target=drain, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got["a"] + got["b"]) == sorted(qids)  # every message claimed once, by one node
    assert not set(got["a"]) & set(got["b"])


async def test_a_dead_nodes_recipients_are_taken_over_when_the_lease_runs_out(pg_spools):
    dead, survivor = pg_spools
    qid = await put(dead, ["x@example.net", "y@example.net"])
    now = time.time()
    [msg] = dead.claim(10, lease=30, now=now)  # the node dies holding the message
    assert survivor.recover() == 0  # a restart must not steal live leases
    assert survivor.claim(10, lease=30, now=now + 5) == []
    [taken] = survivor.claim(10, lease=30, now=now + 31)
    assert taken.queue_id == qid and sorted(taken.recipients) == sorted(msg.recipients)
    await survivor.record([RecipientOutcome(qid, r, RecipientState.DELIVERED, 1, "2.0.0", "250 ok")
                           for r in taken.recipients])
    assert dead.list_recipients() == [] and survivor.count() == 0  # every node sees one queue


async def test_concurrent_results_for_one_message_from_two_nodes_still_remove_it(pg_spools):
    a, b = pg_spools
    for _ in range(5):
        qid = await put(a, ["x@example.net", "y@example.net"])
        a.claim(10, lease=60)
        results = [RecipientOutcome(qid, r, RecipientState.DELIVERED, 1, "2.0.0", "250 ok")
                   for r in ("x@example.net", "y@example.net")]
        threads = [threading.Thread(target=s.record_sync, args=([u],)) for s, u in zip((a, b), results, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert a.show(qid) is None


async def test_a_result_and_its_event_commit_together_or_not_at_all(pg_spools):
    from pipeline.contract.context import Event
    from pipeline.events.postgres import PostgresEventStore

    spool, _ = pg_spools
    store = PostgresEventStore(spool.url)
    try:
        qid = await put(spool, ["x@example.net"])
        spool.claim(10, lease=60)
        done = RecipientOutcome(qid, "x@example.net", RecipientState.BOUNCED, 1, "5.1.1", "550 no such user")
        event = Event("bounced", queue_id=qid, recipient="x@example.net", credential="shop", data={"dsn": "5.1.1"})

        def dies_after_writing(tx, ev, urls) -> int:
            store.write_event(tx, ev, urls)
            raise RuntimeError("killed mid-transaction")

        with pytest.raises(RuntimeError):
            await spool.record([done], [(event, ["http://127.0.0.1:9/hook"])], dies_after_writing)
        assert spool.show(qid)["recipients"][0]["state"] == "processing"  # neither the state...
        assert store.counts_by_type() == {} and store.suppressed_count() == 0  # ...nor the event
        await spool.record([done], [(event, ["http://127.0.0.1:9/hook"])], store.write_event)
        assert spool.count() == 0 and store.counts_by_type() == {"bounced": 1}
        assert store.webhook_counts() == {"pending": 1} and store.is_suppressed("x@example.net", "shop")
    finally:
        store.close()


async def test_sqlite_outbox_events_reach_the_event_store_once_whatever_the_crash_point(tmp_path):
    """SQLite: the result and its event commit together in spool.db's outbox; a drain interrupted
    before or after events.db's commit, then repeated, stores each event exactly once."""
    import json

    from pipeline.config import Config
    from pipeline.contract.context import Event
    from pipeline.delivery.results import OutboxResults
    from pipeline.events import EventEmitter
    from pipeline.events.sqlite import SqliteEventStore
    from pipeline.spool.sqlite import SqliteSpool

    spool, store = SqliteSpool(tmp_path / "spool.db"), SqliteEventStore(tmp_path / "events.db")
    emitter = EventEmitter(store, Config(), collections.Counter())
    results = OutboxResults(spool, store, emitter, wait_results=True)
    qid = await put(spool, ["x@example.net", "y@example.net"])
    spool.claim(10, lease=60)
    outcomes = [RecipientOutcome(qid, r, RecipientState.DELIVERED, 1, "2.0.0", "250 ok")
                for r in ("x@example.net", "y@example.net")]
    events = [Event("delivered", queue_id=qid, recipient=o.recipient) for o in outcomes]
    rows = [(f"o{i}", json.dumps(e.to_record()), "[]") for i, e in enumerate(events)]
    await spool.record(outcomes, rows)  # the commit; then the process "dies" before draining
    await store.record(events[0], [], "o0")  # ...or after storing the first event, before forgetting it
    assert spool.count() == 0 and len(spool.outbox()) == 2
    restarted = OutboxResults(spool, store, emitter)
    assert await restarted.drain() == 2 and await restarted.drain() == 0
    assert store.counts_by_type() == {"delivered": 1 + 1} and spool.outbox() == []
    qid2 = await put(spool, ["z@example.net"])
    spool.claim(10, lease=60)
    await results.record([RecipientOutcome(qid2, "z@example.net", RecipientState.BOUNCED, 1, "5.1.1", "550 no")],
                         [Event("bounced", queue_id=qid2, recipient="z@example.net", data={"dsn": "5.1.1"})])
    assert store.counts_by_type() == {"delivered": 2, "bounced": 1} and store.is_suppressed("z@example.net")
    spool.close()
    store.close()


async def test_sqlite_outbox_forwards_many_messages_events_in_one_commit_in_order_once(tmp_path):
    """SQLite (issue 17 item 4): the accepted events of several messages (committed with them) and
    their delivered events (committed with the results) reach events.db in one transaction, each
    message's accepted before its delivered, each event once and announced once; the forwarded rows
    leave spool.db with its next transaction, not in a commit of their own."""
    from pipeline.config import Config
    from pipeline.contract.context import Event
    from pipeline.delivery.results import OutboxResults
    from pipeline.events import EventEmitter
    from pipeline.events.sqlite import SqliteEventStore
    from pipeline.spool.sqlite import SqliteSpool

    spool = SqliteSpool(tmp_path / "spool.db", forget_after=3600)  # the delete waits for company
    store = SqliteEventStore(tmp_path / "events.db")
    counters: collections.Counter[str] = collections.Counter()
    outbox = OutboxResults(spool, store, EventEmitter(store, Config(), counters), linger=3600, wait_results=True)
    accepts = outbox.accepts()  # as the SMTP ingress has it: nobody waits for the accepted events
    try:
        assert await outbox.drain() == 0  # caught up with spool.db (empty): from memory from now on
        qids = []
        for i in range(5):
            rcpt = f"r{i}@example.net"
            ctx = MessageContext(message=Message(RAW, "a@example.org", [rcpt]))
            await accepts.enqueue(ctx, RAW, [rcpt], [Event("accepted", queue_id=ctx.queue_id, recipient=rcpt)])
            qids.append(ctx.queue_id)
        assert store.events() == [] and len(spool.outbox()) == 5  # committed with the messages, lingering
        claimed = spool.claim(10, lease=60)
        outcomes = [RecipientOutcome(m.queue_id, m.recipients[0], RecipientState.DELIVERED, 1, "2.0.0", "250 ok")
                    for m in claimed]
        events_commits, spool_commits = store.commits, spool.commits
        await outbox.record(outcomes, [Event("delivered", queue_id=o.queue_id, recipient=o.recipient)
                                       for o in outcomes])
        assert store.commits == events_commits + 1  # ten events of five messages: one events.db commit
        assert spool.commits == spool_commits + 1  # the results' own commit, nothing else yet
        stored = store.events()
        assert len(stored) == 10 and sorted(e.event.queue_id for e in stored) == sorted(qids * 2)
        for qid in qids:
            assert [e.event.type for e in stored if e.event.queue_id == qid] == ["accepted", "delivered"]
        assert [e.id for e in stored] == sorted(e.id for e in stored)
        assert counters["events_total:accepted"] == 5 and counters["events_total:delivered"] == 5
        assert len(spool.outbox()) == 10  # forwarded, forgotten in spool.db's next transaction:
        await put(spool, ["next@example.net"])
        assert spool.outbox() == [] and spool.commits == spool_commits + 2
        assert await outbox.drain() == 0 and len(store.events()) == 10  # nothing twice
    finally:
        await outbox.close()
        spool.close()
        store.close()


async def test_sqlite_outbox_drain_does_not_chase_events_committed_after_it_began(tmp_path):
    """``drain`` (called at start, beside delivery) forwards what was committed when it was called;
    events committed while it waits are the forwarder's, so steady traffic cannot keep it going,
    hurrying every round past its linger."""
    from pipeline.config import Config
    from pipeline.contract.context import Event
    from pipeline.delivery.results import OutboxResults
    from pipeline.events import EventEmitter
    from pipeline.events.sqlite import SqliteEventStore
    from pipeline.spool.sqlite import SqliteSpool

    spool, store = SqliteSpool(tmp_path / "spool.db"), SqliteEventStore(tmp_path / "events.db")
    outbox = OutboxResults(spool, store, EventEmitter(store, Config(), collections.Counter()), linger=3600)
    accepts = outbox.accepts()
    record_many, in_round, go_on = store.record_many, asyncio.Event(), asyncio.Event()

    async def slow_record_many(*args, **kwargs):  # a round that takes a while: traffic goes on meanwhile
        in_round.set()
        await go_on.wait()
        return await record_many(*args, **kwargs)

    async def accept(rcpt: str) -> None:
        ctx = MessageContext(message=Message(RAW, "a@example.org", [rcpt]))
        await accepts.enqueue(ctx, RAW, [rcpt], [Event("accepted", queue_id=ctx.queue_id, recipient=rcpt)])

    try:
        assert await outbox.drain() == 0  # caught up with spool.db: from memory from now on
        await accept("first@example.net")
        store.record_many = slow_record_many  # type: ignore[method-assign]
        draining = asyncio.create_task(outbox.drain())
        await in_round.wait()
        await accept("later@example.net")  # committed after drain began
        go_on.set()
        assert await asyncio.wait_for(draining, 10) == 1
        assert [e.event.recipient for e in store.events()] == ["first@example.net"]  # the later one lingers
    finally:
        go_on.set()
        await outbox.close()
        spool.close()
        store.close()


async def test_sqlite_results_return_once_committed_and_their_events_share_one_later_events_db_commit(tmp_path):
    """By default a result's caller does not wait for events.db (issue 17: a commit per delivered
    message at one session): its results and events are committed in spool.db when it returns, and
    the events of a burst of results reach events.db together within ``linger``, announced once."""
    from pipeline.config import Config
    from pipeline.contract.context import Event
    from pipeline.delivery.results import OutboxResults
    from pipeline.events import EventEmitter
    from pipeline.events.sqlite import SqliteEventStore
    from pipeline.spool.sqlite import SqliteSpool
    from tests.support.waiting import wait_for

    spool, store = SqliteSpool(tmp_path / "spool.db"), SqliteEventStore(tmp_path / "events.db")
    counters: collections.Counter[str] = collections.Counter()
    outbox = OutboxResults(spool, store, EventEmitter(store, Config(), counters), linger=0.3)
    try:
        assert await outbox.drain() == 0
        qids = [await put(spool, [f"r{i}@example.net"]) for i in range(5)]
        claimed = spool.claim(10, lease=60)
        commits = store.commits
        for m in claimed:  # five results, one after the other, as five delivery slots finish
            outcome = RecipientOutcome(m.queue_id, m.recipients[0], RecipientState.DELIVERED, 1, "2.0.0", "250 ok")
            await outbox.record([outcome], [Event("delivered", queue_id=m.queue_id, recipient=m.recipients[0])])
        assert spool.count() == 0 and len(spool.outbox()) == 5  # committed with the results
        assert store.events() == [] and store.commits == commits  # not yet in events.db
        await wait_for(lambda: len(store.events()) == 5)
        assert store.commits == commits + 1 and counters["events_total:delivered"] == 5
        assert sorted(e.event.queue_id for e in store.events()) == sorted(qids)
    finally:
        await outbox.close()
        spool.close()
        store.close()


async def test_sqlite_outbox_keeps_an_event_events_db_refuses_and_its_message_s_later_ones_in_order(tmp_path):
    """An event events.db refuses stays in spool.db's outbox (nothing lost, nothing out of order: the
    same message's delivered event waits behind its accepted one) while other messages' events go
    through; once events.db takes it, both follow, each stored and announced once."""
    import sqlite3

    from pipeline.config import Config
    from pipeline.contract.context import Event
    from pipeline.delivery.results import OutboxResults
    from pipeline.events import EventEmitter
    from pipeline.events.sqlite import SqliteEventStore
    from pipeline.spool.sqlite import SqliteSpool

    spool, store = SqliteSpool(tmp_path / "spool.db"), SqliteEventStore(tmp_path / "events.db")
    counters: collections.Counter[str] = collections.Counter()
    outbox = OutboxResults(spool, store, EventEmitter(store, Config(), counters), linger=3600, wait_results=True)
    admin = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    admin.execute("CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.recipient = 'poison@example.net' "
                  "AND NEW.type = 'accepted' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    try:
        qids = {}
        for rcpt in ("poison@example.net", "fine@example.net"):
            ctx = MessageContext(message=Message(RAW, "a@example.org", [rcpt]))
            await outbox.accepts().enqueue(ctx, RAW, [rcpt], [Event("accepted", queue_id=ctx.queue_id, recipient=rcpt)])
            qids[rcpt] = ctx.queue_id
        outcomes = [RecipientOutcome(m.queue_id, m.recipients[0], RecipientState.DELIVERED, 1, "2.0.0", "250 ok")
                    for m in spool.claim(10, lease=60)]
        await outbox.record(outcomes, [Event("delivered", queue_id=o.queue_id, recipient=o.recipient)
                                       for o in outcomes])
        assert [(e.event.type, e.event.recipient) for e in store.events()] == [
            ("accepted", "fine@example.net"), ("delivered", "fine@example.net")]
        assert {json.loads(ev)["recipient"] for _, _, ev, _ in spool.outbox()} >= {"poison@example.net"}
        admin.execute("DROP TRIGGER refuse")
        await outbox.drain()
        by_message = {rcpt: [e.event.type for e in store.events(queue_id=qid)] for rcpt, qid in qids.items()}
        assert by_message == {"poison@example.net": ["accepted", "delivered"],
                              "fine@example.net": ["accepted", "delivered"]}
        assert counters["events_total:accepted"] == 2 and counters["events_total:delivered"] == 2
        assert spool.outbox() == []
    finally:
        admin.close()
        await outbox.close()
        spool.close()
        store.close()


async def test_sqlite_forwarded_outbox_rows_are_deleted_alone_when_no_other_write_comes(tmp_path):
    """The deletion of forwarded outbox rows waits for another write of spool.db to ride in, but
    not forever: after ``forget_after`` an empty transaction carries it."""
    from pipeline.spool.sqlite import SqliteSpool
    from tests.support.waiting import wait_for

    spool = SqliteSpool(tmp_path / "spool.db", forget_after=0.0)
    try:
        qid = await put(spool, ["x@example.net"])
        spool.claim(10, lease=60)
        done = asyncio.Event()
        ids: list[int] = []
        await spool.record([RecipientOutcome(qid, "x@example.net", RecipientState.DELIVERED, 1, "2.0.0", "250 ok")],
                           [("o1", "{}", "[]"), ("o2", "{}", "[]")], lambda got: (ids.extend(got), done.set()))
        await done.wait()
        commits = spool.commits
        spool.forget_outbox_later(ids)
        await wait_for(lambda: spool.commits > commits)  # the timer's empty transaction (nothing else writes)
        assert spool.outbox() == [] and spool.commits == commits + 1
    finally:
        spool.close()
