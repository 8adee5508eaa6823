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
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_compare as bc  # noqa: E402
import bench_end_to_end as e2e  # noqa: E402


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


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
                await bc.smtp_source(s.port, 50, 2, 61440)
                await bc.spool_drained(s.spool)
            await asyncio.sleep(3)  # idle: the heap trim runs after a second without work
            idle_before = {s.name: tree_rss(s) for s in servers}
            ms: dict[tuple[str, int], list[float]] = {}
            rate: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.rounds):
                for sessions in args.sessions:
                    for s in servers:
                        before = bc.run_ns(s.pid)
                        rate.setdefault((s.name, sessions), []).append(
                            await bc.smtp_source(s.port, args.messages, sessions, 61440))
                        await bc.spool_drained(s.spool)
                        ms.setdefault((s.name, sessions), []).append(
                            (bc.run_ns(s.pid) - before) / 1e6 / args.messages)
            await asyncio.sleep(3)
            idle_after = {s.name: tree_rss(s) for s in servers}
            for s, tree in zip(servers, trees, strict=True):
                print(f"== {tree} (workers {args.workers}); main-process threads: {threads(s.pid)}")
                for sessions in args.sessions:
                    v = ms[(s.name, sessions)]
                    r = rate[(s.name, sessions)]
                    print(f"  {sessions:>2} sessions: main CPU ms/msg {min(v):.2f} / {statistics.median(v):.2f} / "
                          f"{max(v):.2f} (min/median/max of {len(v)}); msg/s {min(r):.0f} / "
                          f"{statistics.median(r):.0f} / {max(r):.0f}")
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
