"""Main-process CPU per message, its threads, and idle memory per process, for source trees side by side.

    python benchmarks/bench_main_process.py --tree /work/main --tree . [--rounds 3] [--messages 1500]

Each tree's ``smtpgate serve`` runs the ingress configuration of ``bench_compare.py`` (the
admission plugins, durable SQLite spool, empty processing chain in ``--workers`` processes, null
egress). Postfix's ``smtp-source`` sends 60 KB messages at 1 and 10 sessions, the trees taking
turns within each round so machine noise hits them alike; after each run the spool is drained,
so the CPU counted is the whole life of each message in the main process (ingress, spool,
hand-off to a worker, result, egress). Printed: main-process CPU ms per message (scheduler clock,
every thread) min / median / max, the main process's thread count, and the RSS of each process
of the idle tree before and after the load (after the idle heap trim).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_compare as bc  # noqa: E402
import bench_end_to_end as e2e  # noqa: E402


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def thread_ms(pid: int) -> dict[int, float]:
    """CPU ms of each live thread of ``pid`` (scheduler clock)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e6
        except (OSError, ValueError):
            continue
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by native id, from ``py-spy dump`` when installed (Python 3.11 does not
    name OS threads, so /proc shows "python3" for all)."""
    if shutil.which("py-spy") is None:
        return {}
    dump = subprocess.run(["py-spy", "dump", "-p", str(pid)], capture_output=True, text=True).stdout
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) .*"(.*)"', dump, re.M)}


def tree_rss(server: bc.Server) -> str:
    pids = bc.process_tree(server.pid)
    parts = [f"{bc.role(p, server.pid)} {bc.rss_mib(p):.0f}" for p in pids]
    return f"{sum(bc.rss_mib(p) for p in pids):.0f} MiB ({', '.join(parts)})"


async def main_async(args: argparse.Namespace) -> None:
    trees = [t.resolve() for t in args.tree]
    with tempfile.TemporaryDirectory(prefix="bench-main-") as tmp_name:
        tmp = Path(tmp_name)
        key = e2e.write_key(tmp)
        servers = []
        try:
            for n, tree in enumerate(trees):
                servers.append(await bc.start_smtpgate(f"t{n}", tree, tmp, key, 0, args.workers, None))
            for s in servers:
                assert s.spool is not None
                await bc.smtp_source(s.port, 50, 2, 61440)
                await bc.spool_drained(s.spool)
            await asyncio.sleep(3)  # idle: the heap trim runs after a second without work
            idle_before = {s.name: tree_rss(s) for s in servers}
            ms: dict[tuple[str, int], list[float]] = {}
            rate: dict[tuple[str, int], list[float]] = {}
            per_thread: dict[tuple[str, int, int], list[float]] = {}
            for _ in range(args.rounds):
                for sessions in args.sessions:
                    for s in servers:
                        assert s.spool is not None
                        before, per_before = bc.run_ns(s.pid), thread_ms(s.pid)
                        rate.setdefault((s.name, sessions), []).append(
                            await bc.smtp_source(s.port, args.messages, sessions, 61440))
                        await bc.spool_drained(s.spool)
                        ms.setdefault((s.name, sessions), []).append(
                            (bc.run_ns(s.pid) - before) / 1e6 / args.messages)
                        for tid, spent in thread_ms(s.pid).items():
                            per_thread.setdefault((s.name, sessions, tid), []).append(
                                (spent - per_before.get(tid, 0.0)) / args.messages)
            await asyncio.sleep(3)
            idle_after = {s.name: tree_rss(s) for s in servers}
            for s, tree in zip(servers, trees, strict=True):
                names = thread_names(s.pid)
                print(f"== {tree} (workers {args.workers}); main-process threads: {threads(s.pid)}")
                for sessions in args.sessions:
                    v = ms[(s.name, sessions)]
                    r = rate[(s.name, sessions)]
                    print(f"  {sessions:>2} sessions: main CPU ms/msg {min(v):.2f} / {statistics.median(v):.2f} / "
                          f"{max(v):.2f} (min/median/max of {len(v)}); msg/s {min(r):.0f} / "
                          f"{statistics.median(r):.0f} / {max(r):.0f}")
                    rows = [(tid, t) for (n, se, tid), t in per_thread.items()
                            if n == s.name and se == sessions and len(t) == len(v) and statistics.median(t) >= 0.01]
                    for tid, t in sorted(rows, key=lambda row: -statistics.median(row[1])):
                        print(f"      thread {names.get(tid, tid)}: {min(t):.2f} / {statistics.median(t):.2f} / "
                              f"{max(t):.2f} ms/msg")
                print(f"  idle RSS before load: {idle_before[s.name]}")
                print(f"  idle RSS after load:  {idle_after[s.name]}")
        finally:
            for s in servers:
                await s.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, action="append", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=1500)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--workers", type=int, default=2)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
