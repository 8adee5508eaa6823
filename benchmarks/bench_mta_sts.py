"""Benchmark: what an MTA-STS look-up costs direct delivery, uncached and cached.

Everything on loopback (tests/support/egress_net.py): a dnspython authoritative server for the
``_mta-sts`` TXT record and the policy host's A record, an aiohttp HTTPS server with a test CA
serving the policy. Three kinds of look-up, interleaved round by round:

- ``uncached``: a fresh cache: TXT query, A query, TLS handshake with certificate verification,
  HTTP GET, parse (what the first copy to a domain pays, once per ``max_age`` or policy id change);
- ``recheck``: a cached policy whose TXT id is re-checked (one TXT query; every
  ``mta_sts_recheck`` seconds per domain);
- ``cached``: the policy from memory (every other copy).

    python3 benchmarks/bench_mta_sts.py [--rounds N] [--batch N]

Prints min / median / max per look-up over the rounds (each round times a batch and divides).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import parse_config  # noqa: E402
from pipeline.egress.mtasts import MtaSts  # noqa: E402
from pipeline.egress.mx import dns_resolver  # noqa: E402
from tests.support.egress_net import PolicyServer, TestCA, ZoneServer, server_context  # noqa: E402

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: *.bench.test\r\nmax_age: 86400\r\n"


async def main(rounds: int, batch: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    ca = TestCA(tmp / "ca")
    cert, key, _ = ca.issue("mta-sts.bench.test")
    zone = await ZoneServer().start()
    zone.add("_mta-sts.bench.test", "TXT", '"v=STSv1; id=1;"')
    zone.add("mta-sts.bench.test", "A", "127.0.0.1")
    https = await PolicyServer(server_context(cert, key)).start()
    https.policies["bench.test"] = POLICY
    config = parse_config({"dns": zone.dns_config(), "tls_policy": {"ca_file": str(ca.ca_file),
                                                                     "mta_sts_port": https.port}})
    resolver = dns_resolver(config, 5)
    warm = MtaSts(config.tls_policy, resolver)
    assert await warm.policy("bench.test") is not None
    recheck = MtaSts(config.tls_policy.model_copy(update={"mta_sts_recheck": 0.0}), resolver)
    await recheck.policy("bench.test")

    async def uncached() -> None:
        assert await MtaSts(config.tls_policy, resolver).policy("bench.test") is not None

    async def rechecked() -> None:
        assert await recheck.policy("bench.test") is not None

    async def cached() -> None:
        assert await warm.policy("bench.test") is not None

    kinds = {"uncached": (uncached, max(1, batch // 20)), "recheck": (rechecked, batch), "cached": (cached, batch * 20)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for name, (fn, n) in kinds.items():
            start = time.perf_counter()
            for _ in range(n):
                await fn()
            times[name].append((time.perf_counter() - start) / n)
    await https.close()
    zone.close()
    print(f"MTA-STS look-up, {rounds} interleaved rounds (per look-up)")
    for name, values in times.items():
        lo, med, hi = min(values), statistics.median(values), max(values)
        unit, scale = ("us", 1e6) if med < 1e-3 else ("ms", 1e3)
        print(f"  {name:<9} min {lo * scale:8.2f} {unit}  median {med * scale:8.2f} {unit}  max {hi * scale:8.2f} {unit}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.batch))
