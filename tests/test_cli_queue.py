"""``smtpgate queue``: list, show, retry, delete, flush on a real spool (both backends: on PostgreSQL
the commands see the whole cluster's queue)."""

from __future__ import annotations

import asyncio
import time

import pytest
from click.testing import CliRunner

from pipeline.app.cli import main
from pipeline.contract.context import Credential, MessageContext
from pipeline.contract.message import Message
from pipeline.contract.vocabulary import RecipientState
from pipeline.ports import RecipientOutcome

RAW = b"From: app@example.org\r\nTo: a@example.net\r\nSubject: Queue test\r\n\r\nbody\r\n"


@pytest.fixture
def qb(backend, monkeypatch):
    """The backend, with CLI runs pointed at it."""
    backend.export_env(monkeypatch)
    return backend


def fill(qb) -> tuple[str, str]:
    """Two messages: one deferred (a@), one queued for a sandbox credential."""
    spool = qb.spool()

    async def go() -> tuple[str, str]:
        c1 = MessageContext(message=Message(RAW, "app@example.org", ["a@example.net"]), campaign_id="spring")
        c2 = MessageContext(message=Message(RAW, "app@example.org", ["b@example.net"]),
                            credential=Credential("demo", sandbox=True))
        await spool.enqueue(c1, RAW, ["a@example.net"])
        await spool.enqueue(c2, RAW, ["b@example.net"])
        return c1.queue_id, c2.queue_id

    q1, q2 = asyncio.run(go())
    spool.record_sync([RecipientOutcome(q1, "a@example.net", RecipientState.DEFERRED, 1, "4.7.1",
                                        "451 4.7.1 greylisted", "mx[1.2.3.4]:25", time.time() + 3600)])
    spool.close()
    return q1, q2


def run(*args: str):
    return CliRunner().invoke(main, ["queue", *args])


def test_list_shows_messages_states_and_summary(qb):
    q1, q2 = fill(qb)
    result = run("list")
    assert result.exit_code == 0, result.output
    out = result.output
    assert q1 in out and q2 in out
    assert "a@example.net  [deferred, next attempt" in out and "greylisted" in out
    assert "b@example.net  [queued]" in out
    assert "By state: deferred 1, queued 1" in out
    assert "sandbox maildir" in out and "maildir " in out
    assert "in 2 Requests" in out


def test_list_on_fresh_data_dir_is_empty_and_creates_nothing(qb):
    qb.data_dir.mkdir(parents=True, exist_ok=True)
    result = run("list")
    assert result.exit_code == 0 and "Mail queue is empty" in result.output
    assert not (qb.data_dir / "spool.db").exists()


def test_show_prints_envelope_recipients_and_headers(qb):
    q1, _ = fill(qb)
    result = run("show", q1)
    assert result.exit_code == 0
    assert "Campaign:   spring" in result.output
    assert "a@example.net  deferred, 1 attempt(s)" in result.output
    assert "Subject: Queue test" in result.output and "body" not in result.output
    assert "body" in run("show", "--body", q1).output


def test_retry_makes_deferred_due_now(qb):
    q1, _ = fill(qb)
    result = run("retry", q1)
    assert result.exit_code == 0 and "1 recipient(s) due now" in result.output
    spool = qb.spool()
    assert spool.show(q1)["recipients"][0]["next_attempt"] == 0
    spool.close()


def test_flush_makes_everything_due_now(qb):
    fill(qb)
    result = run("flush")
    assert result.exit_code == 0 and "2 recipient(s) due now" in result.output
    spool = qb.spool()
    assert spool.next_due() == 0
    spool.close()


def test_delete_removes_message(qb):
    q1, q2 = fill(qb)
    assert run("delete", q1).exit_code == 0
    out = run("list").output
    assert q1 not in out and q2 in out


def test_unknown_id_is_one_line_error(qb):
    fill(qb)
    for cmd in ("show", "retry", "delete"):
        result = run(cmd, "NOSUCHID")
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines()[1:] == [result.stderr.strip().splitlines()[-1]]
        assert "no message NOSUCHID" in result.stderr.splitlines()[-1]
        assert "Traceback" not in result.output


def test_hold_keeps_recipients_from_claims_until_release(qb):
    q1, q2 = fill(qb)
    result = run("hold", q1)
    assert result.exit_code == 0 and "1 recipient(s) held" in result.output
    spool = qb.spool()
    try:
        assert spool.show(q1)["recipients"][0]["state"] == "held"
        assert spool.retry(q1) == 0  # retry does not release
        claimed = spool.claim(10, 60, now=time.time() + 7200)
        assert [m.queue_id for m in claimed] == [q2]  # q1's copy would be due by now, but it is held
    finally:
        spool.close()
    result = run("release", q1)
    assert result.exit_code == 0 and "1 recipient(s) released" in result.output
    spool = qb.spool()
    try:
        assert [m.queue_id for m in spool.claim(10, 60)] == [q1]
    finally:
        spool.close()
    assert run("hold", "nope").exit_code == 1
