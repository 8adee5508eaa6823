"""CPU per message of the event/outbox path in one process: accepted events committed with the
message in spool.db's outbox, delivery results with their events, both forwarded into events.db.

    PYTHONPATH=TREE python3 benchmarks/bench_event_path.py [--messages 300] [--recipients 1 100]

Why a script of its own (issue 17, "main process <= 3 ms per message", "per extra recipient copy
<= 3.5 ms"): ``bench_threads`` measures a whole server with one recipient per message; here the
pieces the main process spends per message and per recipient on events (building the ``accepted``
events and their outbox rows, the delivery results' events, the forwarder's events.db writes) run
with real SQLite files and nothing else, so a change to them shows without the SMTP and admission
noise. The CPU of each thread (the event loop, ``spool-writer``, ``events-writer``) is read from
``/proc/self/task/TID/schedstat`` and divided by the messages; the event loop's share is also split
into "accept" (the enqueue with its events) and "results" (the results with theirs).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

RAW = (
    b"From: Shop <app@example.com>\r\nTo: user@example.org\r\nSubject: Your order has shipped\r\n"
    b"Message-Id: <bench.1@example.com>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"Hello, your order is on its way.\r\n" * 300
)


def thread_ns() -> dict[str, int]:
    """Nanoseconds on a CPU per thread name of this process."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, int] = collections.Counter()
    for task in Path("/proc/self/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[names.get(int(task.name), "other")] += ns
    return out


async def run(messages: int, recipients: int, tmp: Path) -> dict[str, float]:
    from pipeline.chain.accept import enqueue, message_summary
    from pipeline.chain.runner import Trace, TraceEntry
    from pipeline.config import Config
    from pipeline.contract.context import Event, MessageContext, Session
    from pipeline.contract.message import Message
    from pipeline.contract.vocabulary import EventType, RecipientState
    from pipeline.delivery.results import OutboxResults
    from pipeline.events import EventEmitter
    from pipeline.events.sqlite import SqliteEventStore
    from pipeline.ports import RecipientOutcome
    from pipeline.spool.sqlite import SqliteSpool

    spool = SqliteSpool(tmp / "spool.db")
    store = SqliteEventStore(tmp / "events.db")
    counters: collections.Counter[str] = collections.Counter()
    outbox = OutboxResults(spool, store, EventEmitter(store, Config(), counters))
    accepts = outbox.accepts()
    rcpts = [f"user{i}@example.org" for i in range(recipients)]
    session = Session(peer=("192.0.2.1", 40000), helo="client.example.com", listener="smtp")
    trace = Trace(entries=[TraceEntry("on_message", f"plugin{i}", "continue", 0.05) for i in range(6)])
    spent = {"accept": 0.0, "results": 0.0}

    async def one(i: int) -> None:
        ctx = MessageContext(message=Message(RAW, "app@example.com", list(rcpts)), session=session)
        t0 = time.thread_time()
        summary = message_summary(ctx, RAW, trace)
        await enqueue(spool, ctx, RAW, list(rcpts), event_data={"message": summary}, recorder=accepts)
        t1 = time.thread_time()
        spent["accept"] += t1 - t0
        claimed = spool.claim(1000, lease=60)
        t2 = time.thread_time()
        for msg in claimed:
            outcomes = [RecipientOutcome(msg.queue_id, r, RecipientState.DELIVERED, 1, "2.0.0", "250 2.0.0 Ok: queued",
                                         "127.0.0.1:25") for r in msg.recipients]
            events = [Event(type=EventType.DELIVERED, queue_id=msg.queue_id, recipient=o.recipient, data={
                "dsn": o.dsn, "reply": o.reply, "relay": o.relay, "tls": False, "attempts": 1, "delay": 0.012,
                "message": {"trace": [], "headers": [["From", "Shop <app@example.com>"], ["To", o.recipient],
                                                     ["Subject", "Your order has shipped"]]}})
                      for o in outcomes]
            await outbox.record(outcomes, events)
        spent["results"] += time.thread_time() - t2

    for i in range(20):  # warm-up
        await one(i)
    await outbox.drain()
    spent.update(accept=0.0, results=0.0)
    before = thread_ns()
    for i in range(messages):
        await one(i)
    await outbox.drain()
    after = thread_ns()
    await outbox.close()
    spool.close()
    store.close()
    out = {name: (after[name] - before.get(name, 0)) / 1e6 / messages for name in after}
    out["MainThread: accept"] = spent["accept"] * 1e3 / messages
    out["MainThread: results"] = spent["results"] * 1e3 / messages
    out["process"] = sum(v for k, v in out.items() if ":" not in k)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--recipients", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"tree: {sys.path[0] if sys.path else '?'}; CPU ms per message, min / median / max over {args.runs} runs")
    for n in args.recipients:
        runs: list[dict[str, float]] = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
                msgs = max(10, args.messages // max(1, n // 10))
                runs.append(asyncio.run(run(msgs, n, Path(tmp))))
        print(f"\n{n} recipient(s) per message")
        keys = sorted({k for r in runs for k in r}, key=lambda k: (k == "process", k))
        for key in keys:
            vals = [r.get(key, 0.0) for r in runs]
            print(f"  {key:<22} {min(vals):8.3f} {statistics.median(vals):8.3f} {max(vals):8.3f}")


if __name__ == "__main__":
    main()
