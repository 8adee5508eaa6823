"""Clicks and opens per second with events recorded, beside a bare handler on the same server.

    python benchmarks/bench_tracking.py [--requests 5000] [--concurrency 32]

The tracking app (the real ``build_app``, with a durable SQLite event store: WAL,
``synchronous=FULL``, group commit) runs in a child process with one extra route,
``/bench/bare``, that answers the same GIF without verifying or recording anything. The client
(aiohttp, ``--concurrency`` requests in flight, a fixed ``--requests`` count per scenario) runs in
this process, so server and client each get a core. After each scenario the child reports how
many events it stored, so "recorded" is checked, not assumed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from pipeline.app.gateway import Gateway  # noqa: E402
from pipeline.chain.driver import make_config  # noqa: E402
from pipeline.toolkit.tokens import TokenSigner  # noqa: E402
from pipeline.tracking.app import PIXEL  # noqa: E402

KEY = "bench-key"
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


async def serve(data_dir: str) -> None:
    """Child: the tracking app plus /bench/bare and /bench/count; prints the port, runs until stdin closes."""
    config = make_config({"gateway": {"data_dir": data_dir}, "tracking": {"keys": {"k1": KEY}, "key_id": "k1"}})
    gw = Gateway(config)
    app = gw.tracking_service().app

    async def bare(request: web.Request) -> web.Response:
        return web.Response(body=PIXEL, content_type="image/gif")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(gw.events.counts_by_type))

    app.router.add_get("/bench/bare", bare)
    app.router.add_get("/bench/count", count)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()
    await gw.stop()


async def load(session: aiohttp.ClientSession, urls: list[str], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    it = iter(urls)

    async def worker() -> None:
        for url in it:
            t0 = time.perf_counter()
            async with session.get(url, allow_redirects=False) as resp:
                await resp.read()
                if resp.status not in (200, 302):
                    raise RuntimeError(f"{url}: HTTP {resp.status}")
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        await serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", tmp, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None and child.stdin is not None
        port = int((await asyncio.wait_for(child.stdout.readline(), 30)).decode())
        base = f"http://127.0.0.1:{port}"
        signer = TokenSigner({"k1": KEY.encode()}, "k1")
        n = args.requests
        scenarios = {
            "bare handler (no verify, no record)": [f"{base}/bench/bare"] * n,
            "open  /o/{token}.gif (recorded)": [
                f"{base}/o/{signer.sign({'k': 'o', 'q': f'Q{i % 500}', 'r': f'r{i}@x.net', 'c': 'bench'})}.gif"
                for i in range(n)
            ],
            "click /c/{token} (recorded)": [
                f"{base}/c/{signer.sign({'k': 'c', 'u': f'https://shop.example/p/{i}?utm=1', 'q': f'Q{i % 500}', 'r': f'r{i}@x.net', 'c': 'bench'})}"
                for i in range(n)
            ],
        }
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": UA}) as session:
            await load(session, [f"{base}/bench/bare"] * 200, args.concurrency)  # warm-up
            print(f"{n} requests per scenario, {args.concurrency} concurrent, python {sys.version.split()[0]}")
            print(f"{'scenario':<38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            for name, urls in scenarios.items():
                elapsed, lat = await load(session, urls, args.concurrency)
                lat.sort()
                p50, p99 = statistics.median(lat) * 1000, lat[int(len(lat) * 0.99) - 1] * 1000
                print(f"{name:<38} {n / elapsed:8.0f} {p50:8.2f} {p99:8.2f}")
            async with session.get(f"{base}/bench/count") as resp:
                counts = await resp.json()
        print(f"events stored: {json.dumps(counts, sort_keys=True)}")
        if counts.get("opened") != n or counts.get("clicked") != n:
            raise SystemExit("not every request was recorded")
        child.stdin.close()
        await asyncio.wait_for(child.wait(), 30)


if __name__ == "__main__":
    asyncio.run(main())
