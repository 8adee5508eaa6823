"""PostgreSQL spool: the :class:`~pipeline.ports.Spool` port on a database several nodes share.

Same tables and states as the SQLite spool (``pipeline/spool/sqlite.py``). What differs, and why:

- ``enqueue`` returns only after the COMMIT (``synchronous_commit=on`` on every connection), so
  the ingress says ``250`` only for mail that is on the database's disk. Concurrent enqueues share
  one transaction (:class:`~pipeline.storage.batching.GroupCommit`), as in SQLite.
- ``claim`` locks due recipient rows with ``FOR UPDATE SKIP LOCKED`` and leases them
  (``lease_until``): nodes claiming at once never block on, or take, each other's rows, and a node
  that dies mid-delivery has its recipients claimed by the others once the lease runs out.
- ``recover`` hands back only *expired* leases: other nodes' in-flight recipients are legitimately
  ``processing``, so a restarting node must not steal them (its own come back when their lease ends).
- ``record`` locks the message rows first, so two nodes finishing the last recipients of one
  message concurrently cannot both miss that it is complete (and leave it in the queue for ever).
- Other nodes' mail and expired leases are seen by polling: ``changed_elsewhere`` is always true,
  so an idle scheduler runs one claim every ``[spool] poll_interval`` (1 s by default); the local
  enqueue still wakes it at once. Messages are not handed to delivery at enqueue
  (``set_claimer`` is ignored): the claim's ``SKIP LOCKED`` spreads them over the nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import Connection

from pipeline.contract.context import MessageContext
from pipeline.contract.vocabulary import FINAL_STATES
from pipeline.ports import EnqueueClaimer, QueuedMessage, RecipientOutcome
from pipeline.spool.rows import RECIPIENT_COLUMNS, ROW_KEYS, recipient_rows, show_record
from pipeline.storage.batching import GroupCommit
from pipeline.storage.postgres import open_pool, pg_tx

_FINAL = sorted(FINAL_STATES)
_DUE = "((state IN ('queued','deferred') AND next_attempt <= %(now)s) OR (state = 'processing' AND lease_until < %(now)s))"
_NOT_HELD = " AND lower(regexp_replace(recipient, '^.*@', '')) <> ALL(%(hold)s)"
"""Traffic shaping: recipients at held domains stay due and untouched (as ``rcpt_domain`` in SQLite)."""
ROWS_PER_MESSAGE = 100
"""Recipient rows locked per message asked for (the default ``max_recipients``): one claim's row budget."""

EventWriter = Callable[..., int]
"""Writes one event (with its webhook rows and suppression) inside a transaction:
``EventStoreBase.write_event(tx, event, urls[, origin])``."""
EventItem = tuple[Any, ...]
"""``(event, webhook_urls)`` or ``(event, webhook_urls, origin)``: a unique ``origin`` makes a
result's commit safe to repeat when the first COMMIT's outcome is unknown (the event is not stored twice)."""
Enqueued = tuple[tuple[str, str, bytes, str, float], list[str], float, list[tuple[Any, list[str]]], "EventWriter | None"]
Results = tuple[list[RecipientOutcome], list[EventItem], "EventWriter | None"]


class PostgresSpool:
    """The spool in a PostgreSQL database (``[storage] url``)."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self._pool = open_pool(url, max_size=pool_size, name="spool")
        self._listeners: list[Callable[[], None]] = []
        self._enqueues: GroupCommit[Enqueued, None] = GroupCommit(self._commit, self._notify)
        self._records: GroupCommit[Results, None] = GroupCommit(self._record_batch)

    def _tx(self, fn: Callable[[Connection[Any]], Any], op: str | None = None) -> Any:
        """Run ``fn`` in one transaction on a pooled connection (committed on return, else rolled back);
        ``op`` names it in ``/metrics``."""
        with self._pool.connection(op=op) as conn, conn.transaction():
            return fn(conn)

    # -- ingress side ---------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the event loop) after each committed enqueue: wakes the delivery service."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def set_claimer(self, claimer: EnqueueClaimer | None) -> None:
        """Ignored: on a shared database the nodes' claims share the queue out (see the module doc)."""

    def changed_elsewhere(self) -> bool:
        """Always: other nodes enqueue, and their leases expire, without telling this one."""
        return True

    async def enqueue(
        self, ctx: MessageContext, data: bytes, recipients: list[str],
        events: Sequence[tuple[Any, list[str]]] = (), writer: EventWriter | None = None, *, inline: bool = False,
    ) -> None:
        """Return once the message is committed (synchronous commit); raise on failure. ``events``:
        its ``accepted`` events ``(event, webhook_urls)``, written by ``writer`` in the same transaction
        (a crash right after the ``250`` cannot lose them). ``inline`` is ignored: the commit happens
        on the server, and the enqueues of every node share its group commit."""
        if events and writer is None:
            raise ValueError("events need a writer")
        row = (ctx.queue_id, ctx.message.mail_from or "", data, json.dumps(ctx.to_record()), time.time())
        # Deferred delivery (a dialect's send_at): the recipients are due at not_before, not now.
        await self._enqueues.submit((row, list(recipients), float(ctx.not_before or 0.0), list(events), writer))

    def _commit(self, batch: list[Enqueued]) -> list[None]:
        def run(conn: Connection[Any]) -> None:
            now = time.time()
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO messages VALUES (%s, %s, %s, %s, %s)", [item[0] for item in batch])
                cur.executemany(
                    "INSERT INTO recipients (queue_id, recipient, updated_at, next_attempt) VALUES (%s, %s, %s, %s)",
                    [(row[0], r, now, nb) for row, rcpts, nb, _, _ in batch for r in dict.fromkeys(rcpts)],
                )
            tx = pg_tx(conn)
            for _, _, _, events, writer in batch:
                for event, urls in events:
                    assert writer is not None
                    writer(tx, event, urls)

        self._tx(run, "enqueue")
        return [None] * len(batch)

    # -- delivery side --------------------------------------------------------------------

    def recover(self) -> int:
        """Hand back recipients whose lease has run out (a dead node's); never another node's live ones."""

        def run(conn: Connection[Any]) -> int:
            cur = conn.execute(
                "UPDATE recipients SET state='queued', lease_until=0 WHERE state='processing' AND lease_until < %s",
                (time.time(),),
            )
            return cur.rowcount

        return int(self._tx(run, "recover"))

    def claim(
        self,
        limit: int,
        lease: float,
        now: float | None = None,
        exclude: frozenset[tuple[str, str]] = frozenset(),
        hold: frozenset[str] = frozenset(),
    ) -> list[QueuedMessage]:
        """Lease up to ``limit`` messages' due recipients (rows other nodes hold are skipped, not
        waited for); ``hold``: recipient domains not to claim now (traffic shaping)."""
        now = time.time() if now is None else now
        due = f"({_DUE}{_NOT_HELD})" if hold else _DUE

        def run(conn: Connection[Any]) -> list[QueuedMessage]:
            rows = conn.execute(
                f"SELECT queue_id, recipient, attempts, plugin_failures FROM recipients WHERE {due} "
                "ORDER BY next_attempt, queue_id, recipient LIMIT %(rows)s FOR UPDATE SKIP LOCKED",
                {"now": now, "rows": limit * ROWS_PER_MESSAGE, "hold": sorted(hold)},
            ).fetchall()
            by_msg: dict[str, list[tuple[str, int, int]]] = {}
            for qid, rcpt, attempts, failures in rows:
                if (qid, rcpt) in exclude or (qid not in by_msg and len(by_msg) >= limit):
                    continue
                by_msg.setdefault(qid, []).append((rcpt, attempts, failures))
            if not by_msg:
                return []
            msgs = {
                r[0]: r[1:]
                for r in conn.execute(
                    "SELECT queue_id, mail_from, data, context, created_at FROM messages WHERE queue_id = ANY(%s)",
                    (list(by_msg),),
                )
            }
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE recipients SET state='processing', lease_until=%s, updated_at=%s "
                    "WHERE queue_id=%s AND recipient=%s",
                    [(now + lease, now, qid, r) for qid, rcpts in by_msg.items() if qid in msgs for r, _, _ in rcpts],
                )
            return [
                QueuedMessage(
                    queue_id=qid,
                    mail_from=msgs[qid][0],
                    data=bytes(msgs[qid][1]),
                    context=json.loads(msgs[qid][2]),
                    created_at=msgs[qid][3],
                    recipients=[r for r, _, _ in rcpts],
                    attempts={r: a for r, a, _ in rcpts},
                    plugin_failures={r: p for r, _, p in rcpts},
                )
                for qid, rcpts in by_msg.items()
                if qid in msgs
            ]

        return list(self._tx(run, "claim"))

    def next_due(self, hold: frozenset[str] = frozenset()) -> float | None:
        """When the earliest queued or deferred recipient is due (``None``: nothing waiting), not
        counting recipients at ``hold`` domains."""
        sql = "SELECT MIN(next_attempt) FROM recipients WHERE state IN ('queued','deferred')"
        with self._pool.connection(op="next_due") as conn:
            if hold:
                row = conn.execute(sql + _NOT_HELD, {"hold": sorted(hold)}).fetchone()
            else:
                row = conn.execute(sql).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def record(
        self, updates: Sequence[RecipientOutcome], events: Sequence[EventItem] = (),
        writer: EventWriter | None = None,
    ) -> None:
        """Commit recipients' results (and, with ``writer``, the events describing them: issue 11
        point 3) in one transaction; concurrent callers share it."""
        await self._records.submit((list(updates), list(events), writer))

    def _record_batch(self, batch: list[Results]) -> list[None]:
        writers = {w for _, evs, w in batch if evs and w is not None}
        writer = writers.pop() if len(writers) == 1 else None
        if writers:  # different writers cannot share a transaction: one each
            for ups, evs, w in batch:
                self.record_sync(ups, evs, w)
        else:
            self.record_sync([u for ups, _, _ in batch for u in ups], [e for _, evs, _ in batch for e in evs], writer)
        return [None] * len(batch)

    def record_sync(
        self, updates: Sequence[RecipientOutcome], events: Sequence[EventItem] = (),
        writer: EventWriter | None = None,
    ) -> None:
        """Apply results in one transaction; drop messages whose recipients are all final.

        ``events``: ``(event, webhook_urls)`` written by ``writer`` in the same transaction, so a
        crash leaves a recipient's new state and its event (webhook rows, suppression) both or neither.
        """
        if events and writer is None:
            raise ValueError("events need a writer")
        qids = sorted({u.queue_id for u in updates})

        def run(conn: Connection[Any]) -> None:
            now = time.time()
            # Lock the messages (in a fixed order: no deadlock between nodes) before judging completeness.
            conn.execute("SELECT 1 FROM messages WHERE queue_id = ANY(%s) ORDER BY queue_id FOR UPDATE", (qids,))
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE recipients SET state=%s, attempts=%s, next_attempt=%s, last_reply=%s, plugin_failures=%s,"
                    " next_hop=%s, lease_until=0, updated_at=%s WHERE queue_id=%s AND recipient=%s",
                    [
                        (u.state, u.attempts, u.next_attempt, u.last_reply or None, u.plugin_failures, u.relay, now,
                         u.queue_id, u.recipient)
                        for u in updates
                    ],
                )
            conn.execute(
                "DELETE FROM messages m WHERE m.queue_id = ANY(%s) AND NOT EXISTS ("
                " SELECT 1 FROM recipients r WHERE r.queue_id = m.queue_id AND r.state <> ALL(%s))",
                (qids, _FINAL),
            )
            if events and writer is not None:
                tx = pg_tx(conn)
                for item in events:
                    writer(tx, *item)

        self._tx(run, "record")

    def release(self, queue_id: str, recipients: Sequence[str]) -> None:
        """Hand claimed recipients back untouched (shutdown with the message still in hand)."""

        def run(conn: Connection[Any]) -> None:
            conn.execute(
                "UPDATE recipients SET state='queued', lease_until=0 "
                "WHERE queue_id=%s AND recipient = ANY(%s) AND state='processing'",
                (queue_id, list(recipients)),
            )

        self._tx(run)

    def release_leases(self, leases: Sequence[float]) -> int:
        """Hand back recipients still leased until exactly one of ``leases``; how many.

        Why: a claim whose COMMIT reached the server but whose reply did not (the connection died
        in an outage) leased rows the caller never saw; they would wait the whole lease (default
        300 s) before any node delivered them. A claim's ``lease_until`` (its clock reading plus the
        lease) is, in practice, unique to it, so it names exactly those rows.
        """
        if not leases:
            return 0
        return int(self._tx(lambda conn: conn.execute(
            "UPDATE recipients SET state='queued', lease_until=0 WHERE state='processing' AND lease_until = ANY(%s)",
            (list(leases),)).rowcount, "release"))

    # -- queue tools (see the whole cluster's queue) ------------------------------------------

    def list_recipients(self) -> list[dict[str, Any]]:
        """Every recipient still in the queue, oldest message first."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT m.queue_id, m.mail_from, length(m.data), m.created_at, "
                + ", ".join(f"r.{c}" for c in RECIPIENT_COLUMNS)
                + " FROM messages m JOIN recipients r ON r.queue_id = m.queue_id"
                " ORDER BY m.created_at, m.queue_id, r.recipient"
            ).fetchall()
        return [dict(zip(ROW_KEYS, row, strict=True)) for row in rows]

    def show(self, queue_id: str) -> dict[str, Any] | None:
        """One message: envelope, context, raw bytes and each recipient's state."""
        with self._pool.connection() as conn:
            msg = conn.execute(
                "SELECT mail_from, data, context, created_at FROM messages WHERE queue_id=%s", (queue_id,)
            ).fetchone()
            if msg is None:
                return None
            rcpts = conn.execute(
                f"SELECT {', '.join(RECIPIENT_COLUMNS)} FROM recipients WHERE queue_id=%s ORDER BY recipient",
                (queue_id,),
            ).fetchall()
        return show_record(queue_id, msg, recipient_rows(rcpts))

    def retry(self, queue_id: str | None = None) -> int:
        """Make deferred recipients (of one message, or all with ``None``) due now; returns how many."""

        def run(conn: Connection[Any]) -> int:
            if queue_id is None:
                cur = conn.execute("UPDATE recipients SET next_attempt=0 WHERE state IN ('deferred','queued')")
            else:
                cur = conn.execute(
                    "UPDATE recipients SET next_attempt=0 WHERE queue_id=%s AND state IN ('deferred','queued')",
                    (queue_id,),
                )
            return cur.rowcount

        return int(self._tx(run))

    def hold(self, queue_id: str) -> int:
        """Stop a message's waiting copies from being attempted (state ``held``); how many."""
        return int(self._tx(lambda conn: conn.execute(
            "UPDATE recipients SET state='held', updated_at=%s WHERE queue_id=%s AND state IN ('queued','deferred')",
            (time.time(), queue_id)).rowcount))

    def unhold(self, queue_id: str) -> int:
        """Release a held message: its held copies are queued and due now; how many."""
        n = int(self._tx(lambda conn: conn.execute(
            "UPDATE recipients SET state='queued', next_attempt=0, updated_at=%s WHERE queue_id=%s AND state='held'",
            (time.time(), queue_id)).rowcount))
        if n:
            self._notify()
        return n

    def delete(self, queue_id: str) -> bool:
        """Remove a message and its recipients from the queue."""
        return bool(self._tx(lambda conn: conn.execute("DELETE FROM messages WHERE queue_id=%s", (queue_id,)).rowcount))

    def count(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._pool.close()
