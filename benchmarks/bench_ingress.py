"""Ingress throughput: smtpgate's SMTP ingress beside a bare aiosmtpd server, same run.

    python benchmarks/bench_ingress.py [--messages 300] [--clients 1 10 50]

Each server runs in its own subprocess (one CPU for the server, one for the clients, as on a
two-core machine); the clients are aiosmtplib, each keeping one connection and sending the
corpus messages (../shared/corpus/eml) one after another.

* smtpgate: the default chain's admission phases on (header_validation, campaign_tag,
  suppression), AUTH per connection, and every message committed durably to the SQLite spool
  (WAL, synchronous=FULL; concurrent sessions' commits are batched) before ``250``. Only the
  ingress service runs (no delivery workers competing for the CPU).
* bare: aiosmtpd's own SMTP class whose DATA handler only answers ``250``.

Printed: messages per second for each client count, and the ratio smtpgate / bare.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parents[2] / "shared" / "corpus" / "eml"
KEY = "bench-key-0123456789"


# -- servers (run in a subprocess) -------------------------------------------------------------


async def serve_smtpgate(data_dir: str) -> None:
    sys.path.insert(0, str(ROOT))
    from pipeline.app.gateway import Gateway
    from pipeline.config import parse_config

    config = parse_config({
        "gateway": {"hostname": "bench.test", "data_dir": data_dir, "log_level": "warning"},
        "listeners": [{"name": "plain", "port": 0, "tls": "none", "require_tls": False}],
        "credentials": [{"name": "bench", "kind": "apikey", "secret": KEY}],
        "limits": {"max_connections_per_ip": 200},  # every bench client comes from 127.0.0.1
    }, "<bench>")
    gateway = Gateway(config)
    ingress = gateway.ingress_service()
    gateway.services = [ingress]
    await gateway.start()
    print(ingress.port("plain"), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await gateway.stop(1.0)


async def serve_bare() -> None:
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Handler(), hostname="bare.test"), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


# -- clients -----------------------------------------------------------------------------------


def load_corpus() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted(CORPUS.glob("*.eml")):
        data = path.read_bytes()
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
        sender = "bench@example.com"
        for line in head.splitlines():
            if line.lower().startswith("from:"):
                addrs = email.utils.getaddresses([line[5:]])
                if addrs and "@" in addrs[0][1]:
                    sender = addrs[0][1]
        out.append((sender, data))
    if not out:
        raise SystemExit(f"no corpus in {CORPUS}")
    return out


async def client(port: int, messages: list[tuple[str, bytes]], auth: bool) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False, timeout=60,
                           local_hostname="bench.client")
    await smtp.connect()
    await smtp.ehlo()
    if auth:
        await smtp.auth_plain("apikey", KEY)
    for sender, data in messages:
        errors, reply = await smtp.sendmail(sender, ["recipient@example.net"], data)
        if errors or not reply.startswith(("2.0.0", "OK")):
            raise RuntimeError(f"not accepted: {errors} {reply}")
    await smtp.quit()


async def measure(port: int, corpus: list[tuple[str, bytes]], clients: int, total: int, auth: bool) -> float:
    per = max(1, total // clients)
    jobs = [[corpus[(c * per + i) % len(corpus)] for i in range(per)] for c in range(clients)]
    start = time.perf_counter()
    await asyncio.gather(*(client(port, job, auth) for job in jobs))
    return per * clients / (time.perf_counter() - start)


def start_server(mode: str, data_dir: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--data-dir", data_dir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise SystemExit(f"{mode} server did not start")
    return proc, int(line)


def stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300, help="messages per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--rounds", type=int, default=2, help="best of N rounds")
    parser.add_argument("--serve", choices=["smtpgate", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "smtpgate":
        asyncio.run(serve_smtpgate(args.data_dir))
        return
    if args.serve == "bare":
        asyncio.run(serve_bare())
        return

    corpus = load_corpus()
    size = sum(len(d) for _, d in corpus) / len(corpus)
    print(f"corpus: {len(corpus)} messages, {size / 1024:.0f} KiB average; {args.messages} messages per run, "
          f"best of {args.rounds}; cpus: {os.cpu_count()}")
    print(f"{'clients':>8} {'bare msg/s':>12} {'smtpgate msg/s':>15} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        bare, bare_port = start_server("bare", tmp)
        gate, gate_port = start_server("smtpgate", tmp)
        try:
            asyncio.run(measure(gate_port, corpus, 2, 20, True))  # warm-up (imports, credential cache)
            for n in args.clients:
                b = g = 0.0
                for _ in range(args.rounds):
                    b = max(b, asyncio.run(measure(bare_port, corpus, n, args.messages, False)))
                    g = max(g, asyncio.run(measure(gate_port, corpus, n, args.messages, True)))
                print(f"{n:>8} {b:>12.0f} {g:>15.0f} {g / b:>7.2f}", flush=True)
        finally:
            stop_server(bare)
            stop_server(gate)
        spool = Path(tmp) / "spool.db"
        print(f"spool: {spool.stat().st_size / 1e6:.1f} MB committed (synchronous=FULL)")


if __name__ == "__main__":
    main()
