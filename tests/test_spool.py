"""The SQLite spool: durable enqueue, claims with leases, recovery, results, queue operations."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from pipeline.contract.context import Credential, MessageContext
from pipeline.contract.message import Message
from pipeline.contract.vocabulary import RecipientState
from pipeline.ports import RecipientOutcome
from pipeline.spool.sqlite import SqliteSpool

RAW = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\n\r\nbody\r\n"


async def put(spool: SqliteSpool, rcpts: list[str], **kw) -> str:
    ctx = MessageContext(message=Message(RAW, "a@example.org", rcpts), **kw)
    await spool.enqueue(ctx, RAW, rcpts)
    return ctx.queue_id


async def test_enqueue_is_committed_before_return_and_visible_to_another_connection(tmp_path: Path):
    spool = SqliteSpool(tmp_path / "spool.db")
    qid = await put(spool, ["b@example.net"], credential=Credential("app", features={"dkim": True}),
                    campaign_id="c1")
    other = sqlite3.connect(tmp_path / "spool.db")  # no shared cache: only committed data is visible
    assert other.execute("SELECT data FROM messages WHERE queue_id=?", (qid,)).fetchone()[0] == RAW
    other.close()
    spool.close()
    reopened = SqliteSpool(tmp_path / "spool.db")
    [msg] = reopened.claim(10, lease=60)
    assert msg.context["credential"]["name"] == "app" and msg.context["campaign_id"] == "c1"
    assert msg.recipients == ["b@example.net"] and msg.data == RAW
    reopened.close()


async def test_concurrent_enqueues_share_commits_and_all_land(tmp_path: Path):
    spool = SqliteSpool(tmp_path / "spool.db")
    woke = []
    spool.add_listener(lambda: woke.append(1))
    qids = await asyncio.gather(*(put(spool, [f"r{i}@example.net"]) for i in range(50)))
    assert spool.count() == 50 and len(set(qids)) == 50
    assert 1 <= len(woke) < 50  # batched: fewer commits than messages
    spool.close()


async def test_claim_leases_and_expired_lease_is_claimed_again(tmp_path: Path):
    spool = SqliteSpool(tmp_path / "spool.db")
    qid = await put(spool, ["x@example.net", "y@example.net"])
    now = time.time()
    [msg] = spool.claim(10, lease=30, now=now)
    assert sorted(msg.recipients) == ["x@example.net", "y@example.net"]
    assert spool.claim(10, lease=30, now=now + 1) == []  # leased
    assert spool.claim(10, lease=30, now=now + 31, exclude=frozenset({(qid, "x@example.net")}))[0].recipients == [
        "y@example.net"
    ]
    spool.close()


async def test_recover_requeues_processing(tmp_path: Path):
    spool = SqliteSpool(tmp_path / "spool.db")
    await put(spool, ["x@example.net"])
    spool.claim(10, lease=3600)
    assert spool.claim(10, lease=3600) == []
    assert spool.recover() == 1
    assert len(spool.claim(10, lease=3600)) == 1
    spool.close()


async def test_deferred_waits_for_next_attempt_and_final_states_remove_message(tmp_path: Path):
    spool = SqliteSpool(tmp_path / "spool.db")
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


async def test_release_hands_back_and_delete_removes(tmp_path: Path):
    spool = SqliteSpool(tmp_path / "spool.db")
    qid = await put(spool, ["x@example.net"])
    [msg] = spool.claim(10, lease=3600)
    spool.release(qid, msg.recipients)
    assert spool.show(qid)["recipients"][0]["state"] == "queued"
    assert spool.delete(qid) and not spool.delete(qid)
    assert spool.list_recipients() == []
    spool.close()
