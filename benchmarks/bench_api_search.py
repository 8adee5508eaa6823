"""Message log search through the real API over a large log: latency per query kind (p50/p99).

    python benchmarks/bench_api_search.py [--messages 100000] [--queries 300]

Fills a fresh ``events.db`` through the real event store (``accepted`` events carrying the
message summary, then a delivery result per copy, group-committed in batches: the same path the
gateway writes), then starts the API (the real ``Gateway.api_service`` on an ephemeral port) and
times sequential ``GET`` requests with an administrator's and a tenant's token. Each query's
answer is checked (found the expected message / a full page), so a fast wrong answer cannot pass.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from pipeline.accounts.api_tokens import ApiTokenStore  # noqa: E402
from pipeline.app.gateway import Gateway  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.contract.context import Event  # noqa: E402

CREDENTIALS = [f"tenant{i}" for i in range(20)]
STATES = ["delivered"] * 90 + ["bounced"] * 5 + ["deferred"] * 4 + ["failed"]


def events_for(i: int, n: int, now: float) -> list[Event]:
    qid, cred = f"q{i:08d}", CREDENTIALS[i % len(CREDENTIALS)]
    rcpt, campaign = f"user{i}@example.net", f"camp{i % 500}"
    summary = {"mail_from": f"news@{cred}.example", "subject": f"Message {i}", "message_id": f"<{i}@{cred}.example>",
               "size": 2000, "client_ip": "192.0.2.7", "tls": True, "listener": "submission", "helo": "app",
               "headers": [["Subject", f"Message {i}"], ["From", f"news@{cred}.example"]],
               "trace": [{"phase": "on_message", "plugin": "header_validation", "verdict": "accept", "ms": 0.1,
                          "edits": []}]}
    at = now - 30 * 86400 + i * (29 * 86400 / n)  # spread over the last 30 days
    common = {"queue_id": qid, "recipient": rcpt, "credential": cred, "campaign_id": campaign}
    return [Event("accepted", time=at, data={"message": summary}, **common),
            Event(STATES[i % len(STATES)], time=at + 2, data={"dsn": "2.0.0", "reply": "ok", "relay": "mx",
                                                             "attempts": 1}, **common)]


async def fill(gw: Gateway, n: int, batch: int = 2000) -> float:
    start, now = time.perf_counter(), time.time()
    for lo in range(0, n, batch):
        events = [e for i in range(lo, min(n, lo + batch)) for e in events_for(i, n, now)]
        accepted = [e for e in events if e.type == "accepted"]
        results = [e for e in events if e.type != "accepted"]
        await asyncio.gather(*(gw.events.record(e) for e in accepted))
        await asyncio.gather(*(gw.events.record(e) for e in results))
    return time.perf_counter() - start


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000, help="at least 2000 (50 a day)")
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({"gateway": {"data_dir": tmp}, "api": {"listen_port": 0}}, "<bench>")
        tokens = ApiTokenStore(Path(tmp) / "credentials.db")
        admin, tenant = tokens.add("admin"), tokens.add("tenant", "tenant3")
        tokens.close()
        gw = Gateway(config)
        api = gw.api_service(port=0)
        gw.services = [api]
        await gw.start()
        try:
            took = await fill(gw, args.messages)
            print(f"filled {args.messages} messages ({2 * args.messages} events) in {took:.1f} s")
            rnd = random.Random(7)
            n = args.messages

            kinds = {
                "recipient": lambda: ({"recipient": f"user{rnd.randrange(n)}@example.net"}, admin, 1),
                "message_id": lambda: ({"message_id": f"{(i := rnd.randrange(n))}@{CREDENTIALS[i % 20]}.example"},
                                       admin, 1),
                "sender, page of 50": lambda: ({"sender": f"news@{rnd.choice(CREDENTIALS)}.example"}, admin, 50),
                "campaign+state=bounced": lambda: ({"campaign": f"camp{rnd.randrange(500)}", "state": "bounced"},
                                                   admin, None),
                "since/until one day": lambda: (dict.fromkeys(("since", "until"), time.strftime(
                    "%Y-%m-%d", time.gmtime(time.time() - rnd.randrange(2, 28) * 86400))), admin, 50),
                "tenant token, page of 50": lambda: ({}, tenant, 50),
                "tenant token, recipient": lambda: ({"recipient": f"user{3 + 20 * rnd.randrange(n // 20)}@example.net"},
                                                    tenant, 1),
            }
            async with aiohttp.ClientSession(base_url=api.url) as http:
                for name, make in kinds.items():
                    samples = []
                    for _ in range(args.queries):
                        params, token, expect = make()
                        t0 = time.perf_counter()
                        async with http.get("/api/v1/messages", params=params,
                                            headers={"Authorization": f"Bearer {token}"}) as r:
                            body = await r.json()
                        samples.append(time.perf_counter() - t0)
                        assert r.status == 200, body
                        if expect is not None:
                            assert len(body["messages"]) == expect, (name, params, len(body["messages"]))
                    print(f"{name:<28} p50 {pct(samples, 50):7.2f} ms   p99 {pct(samples, 99):7.2f} ms   "
                          f"({1 / statistics.mean(samples):.0f} req/s sequential)")
                samples = []
                for _ in range(args.queries):
                    qid = f"q{rnd.randrange(n):08d}"
                    t0 = time.perf_counter()
                    async with http.get(f"/api/v1/messages/{qid}", headers={"Authorization": f"Bearer {admin}"}) as r:
                        body = await r.json()
                    samples.append(time.perf_counter() - t0)
                    assert r.status == 200 and body["queue_id"] == qid and len(body["events"]) == 2
                print(f"{'message story':<28} p50 {pct(samples, 50):7.2f} ms   p99 {pct(samples, 99):7.2f} ms")
        finally:
            await gw.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
