"""The HTTP send API and refusal events: what they cost.

    python benchmarks/bench_api_send.py [--sends 300] [--concurrency 8] [--notes 200000]

1. ``POST /api/v1/messages`` through the real API (``Gateway.api_service`` on an ephemeral port, the
   real admission chain ``header_validation, campaign_tag``, the SQLite spool with ``synchronous=FULL``,
   no delivery): composed messages with a 20 KB attachment, ``--concurrency`` clients at once;
   messages/s and request latency p50/p99. Each answer must be a 202 with a queue id, and the spool
   must hold every message at the end, so a fast wrong answer cannot pass.
2. :meth:`RefusalEvents.note`, the call on the SMTP reply path for every 4xx/5xx: microseconds per
   call when it only counts (a flood of one kind) and when it stores (a new kind each time).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from pipeline.accounts.api_tokens import ApiTokenStore  # noqa: E402
from pipeline.app.gateway import Gateway  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.contract.context import Event  # noqa: E402
from pipeline.events.refusals import RefusalEvents  # noqa: E402


async def bench_send(sends: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        config = parse_config(
            {
                "gateway": {"data_dir": str(data)},
                "chain": {"plugins": ["header_validation", "campaign_tag"]},
                "api": {"listen_port": 0},
                "credentials": [
                    {
                        "name": "shop",
                        "username": "shop",
                        "secret": "pw",
                        "allowed_sender_domains": ["shop.example"],
                    }
                ],
            }
        )
        store = ApiTokenStore(data / "credentials.db")
        token = store.add("shop", "shop")
        store.close()
        gw = Gateway(config)
        api = gw.api_service(port=0)
        gw.services = [api]
        await gw.start()
        attachment = base64.b64encode(os.urandom(20_000)).decode()
        latencies: list[float] = []
        queue_ids: list[str] = []
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

                async def one(i: int) -> None:
                    body = {
                        "from": "news@shop.example",
                        "to": [f"user{i}@example.net"],
                        "subject": f"Order {i}",
                        "text": "Thank you for your order.",
                        "html": f"<p>Order <b>{i}</b></p>",
                        "attachments": [
                            {
                                "filename": "invoice.pdf",
                                "content_type": "application/pdf",
                                "content": attachment,
                            }
                        ],
                        "campaign_id": "orders",
                    }
                    t0 = time.perf_counter()
                    async with http.post(api.url + "/api/v1/messages", json=body) as r:
                        got = await r.json()
                        assert r.status == 202, got
                    latencies.append(time.perf_counter() - t0)
                    queue_ids.append(got["queue_id"])

                async def worker(k: int) -> None:
                    for i in range(k, sends, concurrency):
                        await one(i)

                await one(-1)  # warm up (imports, first spool commit)
                latencies.clear()
                t0 = time.perf_counter()
                await asyncio.gather(*(worker(k) for k in range(concurrency)))
                elapsed = time.perf_counter() - t0
            assert all(gw.spool.show(q) is not None for q in queue_ids[-5:])
            assert len(set(queue_ids)) == sends + 1
        finally:
            await gw.stop(1.0)
    lat = sorted(latencies)
    print(
        f"HTTP send: {sends} composed messages (20 KB attachment), concurrency {concurrency}: "
        f"{sends / elapsed:.0f} msg/s; latency p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms"
    )


class NullSink:
    async def emit(self, event: Event, *, strict: bool = False) -> None:
        return None


async def bench_note(notes: int) -> None:
    refusals = RefusalEvents(NullSink(), Counter())
    reply = "550 5.0.0 Email is in the account stoplist"
    t0 = time.perf_counter()
    for _ in range(notes):
        refusals.note(
            reply=reply,
            phase="rcpt",
            client_ip="192.0.2.1",
            credential="shop",
            sender="a@shop.example",
            recipient="x@example.net",
            listener="plain",
        )
    counted = (time.perf_counter() - t0) / notes
    await refusals.aclose()
    refusals = RefusalEvents(NullSink(), Counter(), max_keys=notes + 1)
    n = notes // 10
    t0 = time.perf_counter()
    for i in range(n):
        refusals.note(reply=reply, phase="rcpt", client_ip=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    stored = (time.perf_counter() - t0) / n
    await refusals.aclose()
    print(
        f"RefusalEvents.note: {counted * 1e6:.2f} us per call when counted (same kind within the window), "
        f"{stored * 1e6:.2f} us when it schedules a stored event (a new kind)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sends", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--notes", type=int, default=200_000)
    args = parser.parse_args()
    asyncio.run(bench_send(args.sends, args.concurrency))
    asyncio.run(bench_note(args.notes))


if __name__ == "__main__":
    main()
