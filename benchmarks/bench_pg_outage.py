"""PostgreSQL stopped for 10 s under load, and back: what the SMTP clients, the next hop and the
operator see (issue 11 point 5, the failure-behaviour transcript).

    python benchmarks/bench_pg_outage.py [--runs 3] [--clients 20] [--before 8] [--outage 10] [--after 12] [--nodes 1]

Each run starts ``--nodes`` ``smtpgate serve`` node(s) (the clients spread over them) on a fresh database of a private PostgreSQL cluster
(tests/support/pg_cluster.py; empty chain, 1 worker, smarthost egress to an aiosmtpd sink in this
process). ``--clients`` SMTP clients send without pause (a new message after each reply; after a
refusal they wait 0.2 s). After ``--before`` seconds the database stops taking connections and its
open ones are killed (``ALLOW_CONNECTIONS false`` + ``pg_terminate_backend``: a restart, as the
node sees it) for ``--outage`` seconds, then everything is let through again and the load goes on
for ``--after`` seconds. A tracking client clicks a signed link every 0.1 s throughout.

Printed per second: ``250`` replies, ``451`` replies, other failures, copies arriving at the sink,
clicks answered with a redirect; then ``smtpgate_db_up`` and the tracking backlog scraped from
``/metrics`` during and after the outage, the node's log lines about it, the time from the restore
to the first ``250`` and to the first delivery, and the end check: accepted == delivered ==
``delivered`` events == ``accepted`` events, every redirected click stored once, no duplicates
(the run prints MISMATCH otherwise). Over several runs the
times to the first ``250`` are summarised (min/median/max).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import aiosmtplib
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pg_cluster import PgCluster  # noqa: E402
from tests.support.smtp_sink import start_sink  # noqa: E402
from tests.support.tracking import KEY  # noqa: E402
from tests.test_crash import Server, message, write_config  # noqa: E402

WORDS = ("database", "claiming", "recording", "stoplist", "event store", "held", "backlog", "handed back")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_config(tmp: Path, sink_port: int, url: str, tracking_port: int, name: str = "node") -> Path:
    path = tmp / f"{name}.toml"
    write_config(path, tmp / name, sink_port)
    text = path.read_text().replace("workers = 2", "workers = 1")
    text = text.replace("[tracking]\nlisten_port = 0\n", f'[tracking]\nlisten_port = {tracking_port}\n'
                        f'keys = {{ k1 = "{KEY}" }}\nkey_id = "k1"\n')
    path.write_text(text + f'\n[storage]\nurl = "{url}"\n')
    return path


def scalar(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row else 0


def metric(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name):
            return line.rsplit(" ", 1)[1]
    return "-"


async def run(
    cluster: PgCluster, n_clients: int, before: float, outage: float, after: float, nodes: int = 1
) -> dict[str, float]:
    from pipeline.toolkit.tokens import TokenSigner

    url = cluster.new_database()
    db = url.rsplit("/", 1)[1]
    controller, sink = start_sink()
    tmp = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    tports = [free_port() for _ in range(nodes)]
    servers = [Server(node_config(tmp, controller.port, url, p, f"node{i}")) for i, p in enumerate(tports)]
    server, tport = servers[0], tports[0]
    click = TokenSigner({"k1": KEY.encode()}, "k1").sign({"k": "c", "q": "Q", "r": "a@example.net",
                                                          "u": "https://shop.example/"})
    counts: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    accepted: set[int] = set()
    next_id = iter(range(10**9))
    marks: dict[str, float] = {}
    scrapes: list[str] = []
    try:
        for node, port in zip(servers, tports, strict=True):
            await node.start()
            async with aiohttp.ClientSession() as http:  # the tracking listener starts after the SMTP one
                for _ in range(100):
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz"):
                            break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        stop_at = t0 + before + outage + after

        def second() -> int:
            return int(time.monotonic() - t0)

        async def client(node: Server) -> None:
            while time.monotonic() < stop_at:
                i = next(next_id)
                try:
                    await aiosmtplib.send(message(i), sender="app@example.org", recipients=[f"user{i}@example.net"],
                                          hostname="127.0.0.1", port=node.port, start_tls=False, timeout=60)
                except aiosmtplib.SMTPResponseException as exc:
                    counts["451" if exc.code == 451 else "other"][second()] += 1
                    await asyncio.sleep(0.2)
                    continue
                except (aiosmtplib.SMTPException, OSError):
                    counts["other"][second()] += 1
                    await asyncio.sleep(0.2)
                    continue
                now = time.monotonic()
                accepted.add(i)
                counts["250"][second()] += 1
                if "restored" in marks and "first_250" not in marks:
                    marks["first_250"] = now - marks["restored"]

        async def clicker(http: aiohttp.ClientSession) -> None:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                try:
                    async with http.get(f"http://127.0.0.1:{tports[n % nodes]}/c/{click}", allow_redirects=False) as r:
                        counts["302" if r.status == 302 else f"click_{r.status}"][second()] += 1
                except aiohttp.ClientError as exc:
                    counts[f"click_{type(exc).__name__}"][second()] += 1
                await asyncio.sleep(0.1)

        async def sampler() -> None:
            seen = 0
            while time.monotonic() < stop_at + 60:
                n = len(sink.messages)
                if n > seen:
                    counts["delivered"][second()] += n - seen
                    if "restored" in marks and "first_delivery" not in marks and "blocked" in marks:
                        marks["first_delivery"] = time.monotonic() - marks["restored"]
                    seen = n
                if time.monotonic() >= stop_at and seen >= len(accepted):
                    return
                await asyncio.sleep(0.05)

        async def scrape(http: aiohttp.ClientSession, label: str) -> None:
            async with http.get(f"http://127.0.0.1:{tport}/metrics") as r:
                text = await r.text()
            names = {
                "smtpgate_db_up": "smtpgate_db_up ",
                "tracking backlog": 'smtpgate_event_backlog_events{source="tracking"}',
                "db errors claim": 'smtpgate_db_errors_total{op="claim"}',
                "enqueue": 'smtpgate_db_errors_total{op="enqueue"}',
                "record": 'smtpgate_db_errors_total{op="record"}',
                "held clicks written": 'smtpgate_event_backlog_total{result="written",source="tracking"}',
            }
            scrapes.append(f"{label}: " + ", ".join(f"{k} {metric(text, v)}" for k, v in names.items()))

        async def operator(http: aiohttp.ClientSession) -> None:
            await asyncio.sleep(before)
            marks["blocked"] = time.monotonic()
            marks["log_from"] = len(server.log)
            for k, node in enumerate(servers):
                marks[f"log_from{k}"] = len(node.log)
            await asyncio.to_thread(cluster.admin, f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
            await asyncio.to_thread(cluster.admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                                   f" WHERE datname = '{db}'")
            await asyncio.sleep(outage / 2)
            await scrape(http, f"t={second()} s (database away)")
            await asyncio.sleep(outage / 2)
            await asyncio.to_thread(cluster.admin, f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
            marks["restored"] = time.monotonic()
            await asyncio.sleep(after / 2)
            await scrape(http, f"t={second()} s (database back)")

        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(client(servers[c % nodes]) for c in range(n_clients)), clicker(http), sampler(),
                                 operator(http))
        drained = await asyncio.to_thread(sink.wait_for, lambda: len(sink.messages) >= len(accepted), 120)
        await asyncio.sleep(1)
        for node in servers:
            node.proc.terminate()  # type: ignore[union-attr]
            await node.wait(30)
    finally:
        controller.stop()
    delivered_ids = collections.Counter(int(m.header("X-Crash-Id") or -1) for m in sink.messages)
    events = scalar(url, "SELECT COUNT(*) FROM events WHERE type = 'delivered'")
    distinct_events = scalar(url, "SELECT COUNT(DISTINCT recipient) FROM events WHERE type = 'delivered'")
    clicks = scalar(url, "SELECT COUNT(*) FROM events WHERE type = 'clicked'")
    accepted_events = scalar(url, "SELECT COUNT(*) FROM events WHERE type = 'accepted'")
    lost = accepted - set(delivered_ids)
    # committed with the reply lost (the connection died after the COMMIT): the client heard 451 and
    # would send again; a duplicate at worst, never a loss
    extra = set(delivered_ids) - accepted
    dups = sum(c - 1 for c in delivered_ids.values() if c > 1)
    blocked_s, restored_s = int(marks["blocked"] - t0), int(marks["restored"] - t0)
    print(f"\n  t(s) | 250 | 451 | other | delivered | clicks 302   (database away from t={blocked_s} s to t={restored_s} s)")
    last = max(max(c, default=0) for c in counts.values())
    for s in range(last + 1):
        flag = " <- away" if blocked_s <= s < restored_s else ""
        print(f"  {s:4d} | {counts['250'][s]:3d} | {counts['451'][s]:3d} | {counts['other'][s]:5d} |"
              f" {counts['delivered'][s]:9d} | {counts['302'][s]:3d}{flag}")
    for line in scrapes:
        print("  /metrics " + line)
    outage_log = [line for line in server.log[int(marks["log_from"]):] if any(w in line for w in WORDS)]
    warned = [line for line in server.log[int(marks["log_from"]):] if " WARNING " in line or " ERROR " in line]
    if nodes > 1:
        all_warned = sum(1 for k, node in enumerate(servers) for line in node.log[int(marks[f"log_from{k}"]):]
                         if " WARNING " in line or " ERROR " in line)
        print(f"  {nodes} nodes: {all_warned} warning/error lines from the block on, all nodes together; node 0's:")
    print(f"  log lines from the block on: {len(server.log) - int(marks['log_from'])} (one per delivery), of which "
          f"{len(warned)} warnings/errors; about the database:")
    for line in outage_log[:12]:
        print("    " + line[:220])
    others = [line for line in warned if line not in outage_log]
    if others:
        print(f"  other warnings/errors ({len(others)}), first ones:")
        for line in others[:5]:
            print("    " + line[:220])
    first_250, first_delivery = marks.get("first_250", float("nan")), marks.get("first_delivery", float("nan"))
    print(f"  first 250 {first_250:.2f} s after the restore, first delivery {first_delivery:.2f} s after it")
    if extra:
        print(f"  {len(extra)} message(s) delivered that the client saw refused (COMMIT done, reply lost)")
    print(f"  accepted {len(accepted)}, delivered {len(set(delivered_ids))} (+{dups} duplicate copies), lost "
          f"{len(lost)}, delivered events {events} ({distinct_events} recipients), clicks answered "
          f"{sum(counts['302'].values())}, other click answers "
          f"{ {k: sum(v.values()) for k, v in counts.items() if k.startswith('click_')} }, "
          f"clicked events {clicks}, accepted events {accepted_events}, drained={drained}")
    ok = drained and not lost and len(set(delivered_ids)) == events == distinct_events == accepted_events
    ok = ok and clicks == sum(counts["302"].values()) and accepted_events == len(accepted) + len(extra)
    print("  => " + ("OK: every 250 delivered; delivered == delivered events == accepted events; every redirected "
                     "click stored once"
                     if ok else "MISMATCH"))
    if not drained:
        with psycopg.connect(url) as conn:
            for row in conn.execute("SELECT queue_id, state, attempts, lease_until - extract(epoch from now())"
                                    " FROM recipients ORDER BY queue_id LIMIT 10").fetchall():
                print(f"  left in the queue: {row[0]} state={row[1]} attempts={row[2]} lease ends in {row[3]:.0f} s")
    cluster.drop_database(url)
    return {"first_250": first_250, "first_delivery": first_delivery, "ok": float(ok)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--before", type=float, default=8.0)
    ap.add_argument("--outage", type=float, default=10.0)
    ap.add_argument("--after", type=float, default=12.0)
    ap.add_argument("--nodes", type=int, default=1)
    args = ap.parse_args()
    cluster = PgCluster()
    cluster.start()
    results = []
    try:
        for n in range(args.runs):
            print(f"run {n + 1} of {args.runs}: {args.nodes} node(s), {args.clients} SMTP clients, database away "
                  f"{args.outage:g} s", flush=True)
            results.append(await run(cluster, args.clients, args.before, args.outage, args.after, args.nodes))
    finally:
        cluster.stop()
    firsts = [r["first_250"] for r in results]
    deliveries = [r["first_delivery"] for r in results]
    print(f"\ntime to first 250 after the restore: min {min(firsts):.2f} s, median {statistics.median(firsts):.2f} s, "
          f"max {max(firsts):.2f} s; to first delivery: min {min(deliveries):.2f} s, median "
          f"{statistics.median(deliveries):.2f} s, max {max(deliveries):.2f} s; runs OK: "
          f"{sum(int(r['ok']) for r in results)}/{len(results)}")


if __name__ == "__main__":
    asyncio.run(main())
