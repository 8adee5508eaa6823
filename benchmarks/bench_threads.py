"""CPU per message of each thread of ``smtpgate serve``'s main process: where the durable ingress
and the delivery side spend it (the writer threads' commits, the event loop), before and after.

    python benchmarks/bench_threads.py [--tree PATH ...] [--rounds 3] [--sessions 1 10] [--sizes-kb 10 60]
    python benchmarks/bench_threads.py --full-chain [--tree PATH ...] [--sessions 10] [--messages 1500]

Why a script of its own (issue 17 item 4): ``bench_compare`` reports the main process as one
figure; which thread of it pays (the spool's writer, the event store's writer, the event loop)
is what tells whether a commit or a thread hop was saved. Per run: Postfix's ``smtp-source``
(one connection per message) into ``smtpgate serve`` per tree (the default chain's admission
plugins, durable SQLite spool, empty processing chain, null egress), then wait until delivery has
emptied the spool and the event store holds every ``delivered`` event; CPU is the scheduler's
clock of each thread (``/proc/PID/task/TID/schedstat``, nanoseconds) from before the run until
then, divided by the messages. Thread names come from ``py-spy dump`` (native ids). Trees run
interleaved round by round; printed min / median / max over rounds, with the msg/s smtp-source
saw (until its last message's reply, not until delivery); before that, the idle tree's RSS per
process before and after the load, and the main process's thread count; last, the RSS once the
tree has been idle for ``--idle-memory-seconds`` (default 65: past ``[spool] worker_max_idle``,
60 s by default, when a tree that has the setting has stopped its idle workers).

``--full-chain`` runs each tree as ``bench_compare``'s end to end does instead (the full default
chain with the css_inline engine and RSA-2048 DKIM, relaying to Postfix's ``smtp-sink``), sends
``size-typical.eml`` with its HTML unique per message, one recipient each, over ``--sessions``
aiosmtplib connections, and waits for the sink and the event store: the threads of the main process
per unique 55 KB message (the spool writer holds its bodies), and the msg/s end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_compare as bc  # noqa: E402
import bench_end_to_end as e2e  # noqa: E402

GROUPS = ("MainThread", "spool-writer", "events-writer", "other threads", "main process", "workers")
ROWS = (*GROUPS, "msg/s (ingress)")


def py_spy() -> str | None:
    """The ``py-spy`` executable: on PATH, or beside this interpreter (a venv's ``bin`` that is not
    on PATH, as ``.venv/bin/python benchmarks/bench_threads.py`` runs it)."""
    found = shutil.which("py-spy")
    if found is None:
        beside = Path(sys.executable).parent / "py-spy"
        found = str(beside) if beside.exists() else None
    return found


PY_SPY = py_spy()


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from ``py-spy dump``."""
    assert PY_SPY is not None  # checked before any server starts
    out = subprocess.run([PY_SPY, "dump", "-p", str(pid)], capture_output=True, text=True, check=False).stdout
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.M)}


def thread_ns(pid: int) -> dict[int, int]:
    """Nanoseconds on a CPU of each live thread of ``pid``."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree_rss(server: bc.Server) -> str:
    """RSS of the idle process tree, per process (main, workers): issue 17's memory goal."""
    pids = bc.process_tree(server.pid)
    parts = ", ".join(f"{bc.role(p, server.pid)} {bc.rss_mib(p):.0f}" for p in pids)
    return f"{sum(bc.rss_mib(p) for p in pids):.0f} MiB ({parts})"


def children_ns(pid: int) -> int:
    return sum(bc.run_ns(p) for p in bc.process_tree(pid) if p != pid)


async def events_stored(events_db: Path, n: int, timeout: float = 120.0) -> None:
    """Wait until events.db holds ``n`` ``delivered`` events (the delivery side is done)."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(f"file:{events_db}?mode=ro", uri=True, timeout=30)
    try:
        while conn.execute("SELECT COUNT(*) FROM events WHERE type = 'delivered'").fetchone()[0] < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{events_db}: {n} delivered events not stored in {timeout:.0f} s")
            await asyncio.sleep(0.02)
    finally:
        conn.close()


async def measured(server: bc.Server, messages: int, load: Callable[[], Awaitable[float]]) -> dict[str, float]:
    """CPU ms per message of each group while ``load`` runs (it returns the msg/s it saw), until
    the event store holds every message's ``delivered`` event."""
    names = thread_names(server.pid)
    before, kids_before = thread_ns(server.pid), children_ns(server.pid)
    rate = await load()
    after, kids_after = thread_ns(server.pid), children_ns(server.pid)
    names.update({t: n for t, n in thread_names(server.pid).items() if t not in names})
    ms: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
    for tid, ns in after.items():
        spent = (ns - before.get(tid, 0)) / 1e6 / messages
        name = names.get(tid, "")
        ms[name if name in GROUPS else "other threads"] += spent
        ms["main process"] += spent
    ms["workers"] = (kids_after - kids_before) / 1e6 / messages
    ms["msg/s (ingress)"] = rate
    return ms


async def one_run(server: bc.Server, messages: int, sessions: int, size: int, done: int) -> dict[str, float]:
    """CPU ms per message of each group for one smtp-source run; ``done``: delivered events so far."""
    assert server.spool is not None
    spool = server.spool

    async def load() -> float:
        rate = await bc.smtp_source(server.port, messages, sessions, size)
        await bc.spool_drained(spool)
        await events_stored(spool.with_name("events.db"), done + messages)
        return rate

    return await measured(server, messages, load)


async def one_full_run(
    server: bc.Server, sink: bc.Sink, raw: bytes, messages: int, sessions: int, first: int, done: int
) -> dict[str, float]:
    """As :func:`one_run`, with the full default chain: ``messages`` unique copies of ``raw`` (one
    recipient each) over ``sessions`` aiosmtplib connections, until the sink has them all and the
    event store every ``delivered`` event."""
    assert server.spool is not None
    spool = server.spool

    async def load() -> float:
        base, start = sink.count, time.perf_counter()
        await bc.send_transactions(server.port, raw, messages, 1, sessions, first, True)
        if not await sink.wait_for(base + messages, 300):
            raise RuntimeError(f"{server.name}: only {sink.count - base}/{messages} copies arrived")
        rate = messages / (time.perf_counter() - start)
        await events_stored(spool.with_name("events.db"), done + messages)
        return rate

    return await measured(server, messages, load)


async def main(args: argparse.Namespace) -> None:
    trees = [(Path(t).name or str(t), Path(t).resolve()) for t in args.tree] or [("this tree", bc.ROOT)]
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp_name:
        tmp = Path(tmp_name)
        key = e2e.write_key(tmp)
        sinks: dict[str, bc.Sink] = {}
        raw = (e2e.CORPUS / "size-typical.eml").read_bytes()
        servers = []
        for name, tree in trees:
            if args.full_chain:  # the default chain relaying to a sink, as bench_compare's end to end
                sinks[name] = sink = bc.Sink()
                await sink.start()
                server = await bc.start_smtpgate(name, tree, tmp, key, sink.port, args.workers, "css_inline")
                await bc.workers_ready(server, args.workers)
            else:
                server = await bc.start_smtpgate(name, tree, tmp, key, 0, args.workers, None)
            servers.append(server)
        sizes = [0] if args.full_chain else args.sizes_kb  # 0: size-typical.eml, HTML unique per message
        first = 0  # the number the next unique message gets
        try:
            delivered = {s.name: 0 for s in servers}
            for s in servers:  # warm-up: imports, caches, the writer threads started
                if args.full_chain:
                    await bc.send_transactions(s.port, raw, 50, 1, 2, first, True)
                    first += 50
                    await sinks[s.name].wait_for(50, 120)
                else:
                    await bc.smtp_source(s.port, 50, 2, 10240)
                delivered[s.name] += 50
                assert s.spool is not None
                await events_stored(s.spool.with_name("events.db"), delivered[s.name])
            await asyncio.sleep(3)  # idle: the heap trim runs a second after the last message
            idle_before = {s.name: tree_rss(s) for s in servers}
            results: dict[tuple[str, int, int], list[dict[str, float]]] = {}
            for r in range(args.rounds):
                for size_kb in sizes:
                    for sessions in args.sessions:
                        for s in servers if r % 2 == 0 else list(reversed(servers)):
                            if args.full_chain:
                                ms = await one_full_run(s, sinks[s.name], raw, args.messages, sessions, first,
                                                        delivered[s.name])
                                first += args.messages
                            else:
                                ms = await one_run(s, args.messages, sessions, size_kb * 1024, delivered[s.name])
                            delivered[s.name] += args.messages
                            results.setdefault((s.name, sessions, size_kb), []).append(ms)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            last_done = time.monotonic()
            await asyncio.sleep(3)
            print("idle RSS of the process tree, before / after the load:")
            for s in servers:
                threads = len(list(Path(f"/proc/{s.pid}/task").iterdir()))
                print(f"  {s.name}: {idle_before[s.name]} / {tree_rss(s)}; main-process threads: {threads}")
            print(f"CPU ms per message (min / median / max over {args.rounds} rounds, {args.messages} messages each)")
            for size_kb in sizes:
                for sessions in args.sessions:
                    what = "size-typical.eml, full default chain, unique HTML" if args.full_chain else f"{size_kb} KB"
                    print(f"\n{what}, {sessions} session(s)")
                    print(f"  {'thread':<15}" + "".join(f"{s.name:>26}" for s in servers))
                    for group in ROWS:
                        cells = []
                        fmt = ".0f" if group.startswith("msg/s") else ".2f"
                        for s in servers:
                            vals = [m[group] for m in results[(s.name, sessions, size_kb)]]
                            cells.append(f"{min(vals):{fmt}} / {statistics.median(vals):{fmt}} / {max(vals):{fmt}}")
                        label = "msg/s (to sink)" if args.full_chain and group.startswith("msg/s") else group
                        print(f"  {label:<15}" + "".join(f"{c:>26}" for c in cells))
            if args.idle_memory_seconds > 0:
                await asyncio.sleep(max(0.0, last_done + args.idle_memory_seconds - time.monotonic()))
                print(f"\nidle RSS of the process tree {time.monotonic() - last_done:.0f} s after the load "
                      "([spool] worker_max_idle: 60 s by default):")
                for s in servers:
                    print(f"  {s.name}: {tree_rss(s)}")
        finally:
            for s in servers:
                await s.stop()
            for sink in sinks.values():
                await sink.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="a source tree to run (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--sizes-kb", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full-chain", action="store_true",
                        help="the full default chain (css_inline, RSA-2048) relaying to a sink, size-typical.eml "
                        "with unique HTML over --sessions aiosmtplib connections, instead of smtp-source's messages "
                        "into the admission plugins and null egress (--sizes-kb ignored)")
    parser.add_argument("--idle-memory-seconds", type=float, default=65.0,
                        help="RSS again once idle this long, past [spool] worker_max_idle (0: skip)")
    parsed = parser.parse_args()
    if PY_SPY is None:  # it names the threads: without it no figure can be attributed
        sys.exit("bench_threads.py needs py-spy for the thread names: pip install py-spy "
                 "(into the interpreter that runs this script, or anywhere on PATH)")
    asyncio.run(main(parsed))
