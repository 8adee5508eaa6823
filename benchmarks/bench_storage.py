"""Storage choice, end to end: one node on SQLite, one node on PostgreSQL, two nodes on PostgreSQL.

    python benchmarks/bench_storage.py [--messages 600] [--clients 20] [--rounds 1]

Each run starts ``smtpgate serve`` subprocess(es) (empty chain, 1 worker, smarthost egress to an
aiosmtpd sink in this process), sends ``--messages`` messages over ``--clients`` SMTP connections
(split evenly over the nodes), and prints: the ingress rate (all ``250`` replies received), the
end-to-end rate (every copy at the sink), and for PostgreSQL the server's commits per second and
per message over the run (``pg_stat_database.xact_commit``), and after the table, the rows each
message wrote per table (``pg_stat_user_tables``) and the WAL bytes per message. PostgreSQL is a private cluster
started for the run (tests/support/pg_cluster.py), fsync and synchronous_commit on, on the same 2 cores.
Rounds interleave the three set-ups so machine load hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pg_cluster import PgCluster  # noqa: E402
from tests.support.smtp_sink import start_sink  # noqa: E402
from tests.test_crash import Server, send_all, write_config  # noqa: E402


def node_config(tmp: Path, name: str, sink_port: int, url: str | None) -> Path:
    path = tmp / f"{name}.toml"
    write_config(path, tmp / name, sink_port)
    text = path.read_text().replace("workers = 2", "workers = 1")
    if url:
        text += f'\n[storage]\nurl = "{url}"\n'
    path.write_text(text)
    return path


def commits(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def row_writes(url: str) -> dict[str, tuple[int, int, int]]:
    """Rows inserted, updated, deleted so far, by table (``pg_stat_user_tables``, cascades included)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables").fetchall()
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def wal_bytes(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


ROW_DETAILS: list[str] = []
"""Per PostgreSQL run: rows written per message by table, and WAL bytes per message."""


async def run(label: str, nodes: int, url: str | None, n: int, clients: int) -> str:
    controller, sink = start_sink()
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    servers = [Server(node_config(tmp, f"n{i}", controller.port, url)) for i in range(nodes)]
    try:
        for s in servers:
            await s.start()
        before = commits(url) if url else 0
        rows_before = row_writes(url) if url else {}
        wal_before = wal_bytes(url) if url else 0
        accepted: set[int] = set()
        ids = list(range(n))
        t0 = time.perf_counter()
        # Each node gets its share of the clients and messages (send_all uses the module's CLIENTS).
        import tests.test_crash as crash

        crash.CLIENTS = max(1, clients // nodes)
        await asyncio.gather(*(send_all(ids[i::nodes], s.port, accepted) for i, s in enumerate(servers)))
        t_in = time.perf_counter() - t0
        ok = await asyncio.to_thread(sink.wait_for, lambda: len(sink.messages) >= len(accepted), 300)
        t_all = time.perf_counter() - t0
        for s in servers:
            s.proc.terminate()  # type: ignore[union-attr]
            await s.wait(30)
        await asyncio.sleep(1)  # backends report their statistics as they exit
        after = commits(url) if url else 0
        if url:
            await asyncio.sleep(1)  # table statistics are reported by the backends a little later
            rows_after, wal_after = row_writes(url), wal_bytes(url)
            per = max(1, len(accepted))
            parts = []
            for table in sorted(rows_after):
                ins, upd, dele = (a - b for a, b in zip(rows_after[table], rows_before.get(table, (0, 0, 0)), strict=True))
                if ins or upd or dele:
                    parts.append(f"{table} +{ins / per:.2f}/~{upd / per:.2f}/-{dele / per:.2f}")
            ROW_DETAILS.append(f"{label}: rows per message (inserted/updated/deleted) " + ", ".join(parts)
                               + f"; WAL {(wal_after - wal_before) / per / 1024:.1f} KiB per message")
    finally:
        controller.stop()
    line = (f"| {label} | {len(accepted)} | {len(accepted) / t_in:.0f} | {len(accepted) / t_all:.0f} |"
            f" {'' if ok else 'NOT DRAINED '}")
    if url:
        c = after - before
        line += f"{c / t_all:.0f} commits/s, {c / max(1, len(accepted)):.1f} per message |"
    else:
        line += "- |"
    return line


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=600)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    cluster = PgCluster()
    cluster.start()
    try:
        print("| storage | accepted | ingress msg/s | end-to-end msg/s | PostgreSQL |")
        print("|---|---|---|---|---|")
        for _ in range(args.rounds):
            print(await run("SQLite, 1 node", 1, None, args.messages, args.clients), flush=True)
            url = cluster.new_database()
            print(await run("PostgreSQL, 1 node", 1, url, args.messages, args.clients), flush=True)
            url = cluster.new_database()
            print(await run("PostgreSQL, 2 nodes", 2, url, args.messages, args.clients), flush=True)
    finally:
        cluster.stop()
    print()
    for line in ROW_DETAILS:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
