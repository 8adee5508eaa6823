"""End-to-end throughput: SMTP in -> default chain, every plugin on -> smarthost out to a sink.

    python benchmarks/bench_end_to_end.py [--messages 400] [--clients 10 50] [--workers 1 2] [--unique]

Runs ``smtpgate serve`` as a subprocess (as in production) for every combination of client count,
worker count and CSS engine (css_inline, premailer), with throwaway RSA-2048 DKIM keys, and a
sink (aiosmtpd) in this process. Each client keeps one SMTP connection and sends messages one
after another. Printed per run: the ingress rate (all ``250`` replies received) and the end-to-end
rate (every copy arrived at the sink); beside them the bare ingress rate from the same run set
(empty chain, null egress), which is what SMTP in + spool alone can do.

``--unique`` puts the message number into each message's HTML, so no two messages are the same
template (css_inline's per-worker result cache never hits: the worst case for the chain).

``BENCH_SERVE="python3 /path/to/wrapper.py"`` replaces the interpreter command that starts the
server (e.g. a wrapper running ``pipeline.app.cli.main`` under cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("SMTPGATE_CORPUS") or ROOT.parent / "shared" / "corpus") / "eml"  # a worktree elsewhere names it
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class CountingSink:
    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.cond:
            self.count += 1
            self.cond.notify_all()
        return "250 2.0.0 Ok"

    def wait_for(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n, timeout)


class SinkController(Controller):
    def __init__(self, handler: Any) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self._sock.getsockname()[1], data_size_limit=0)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


def write_key(d: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = d / "rsa.pem"
    fmt = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(*fmt))
    return path


def config_text(data_dir: Path, sink_port: int, workers: int, engine: str | None, key: Path) -> str:
    """``engine`` None: bare ingress (no plugins, null egress)."""
    common = f"""
[gateway]
data_dir = "{data_dir}"
hostname = "gw.bench"
log_level = "info"

[[listeners]]
name = "bench"
address = "127.0.0.1"
port = 0
tls = "none"
require_tls = false

[limits]
max_connections = 500
max_connections_per_ip = 500

[[credentials]]
name = "bench"
kind = "ip"
networks = ["127.0.0.0/8"]

[spool]
workers = {workers}
max_in_flight = 128

[tracking]
listen_port = 0
keys = {{ k1 = "bench-secret" }}
base_url = "https://t.example.net"
bounce_domain = "bounces.example.net"

[api]
listen_port = 0
"""
    if engine is None:
        return common + '\n[chain]\nplugins = []\n\n[egress]\ntype = "null"\n'
    return (
        common
        + f"""
[features]
inlinecss = true
trackclicks = true
trackopens = true
trackbounces = true
dkim = true
campaign = true
validate = true
listunsubscribe = true

[egress]
type = "smtp"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
connections_per_hop = 8

[plugins.css_inline]
engine = "{engine}"

[plugins.dkim_sign]
default_domain = "example.com"
rsa_engine = "openssl"

[plugins.dkim_sign.domains."example.com"]
selector = "bench"
key_file = "{key}"
"""
    )


async def start_server(
    config: Path, root: Path = ROOT, command: list[str] | None = None
) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """``smtpgate serve`` from the source tree ``root`` (or ``command`` with the config's path
    after it); its SMTP port once it listens, and its log."""
    if command is None:
        command = [
            *(
                os.environ["BENCH_SERVE"].split()
                if os.environ.get("BENCH_SERVE")
                else [sys.executable, "-c", "from pipeline.app.cli import main; main()"]
            ),
            "serve",
            "-c",
        ]
    proc = await asyncio.create_subprocess_exec(
        *command,
        str(config),
        cwd=root,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    log: list[str] = []
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            m = LISTENING.search(line)
            if m and not ready.done():
                ready.set_result(int(m.group(1)))
        if not ready.done():
            ready.set_exception(RuntimeError("smtpgate serve exited:\n" + "\n".join(log[-20:])))

    asyncio.create_task(read())
    return proc, await asyncio.wait_for(ready, 60), log


def unique_copy(raw: bytes, i: int) -> bytes:
    """``raw`` with its HTML made unique to message ``i`` (a paragraph before ``</body>``)."""
    return raw.replace(b"</body>", b"<p>message %d</p></body>" % i, 1)


async def send(port: int, raw: bytes, n: int, clients: int, first: int, unique: bool = False) -> float:
    """Send ``n`` messages over ``clients`` connections; seconds until the last 250."""
    counter = iter(range(first, first + n))
    start = time.perf_counter()

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await smtp.connect()
        for i in counter:
            data = unique_copy(raw, i) if unique else raw
            await smtp.sendmail("noreply@example.com", [f"user{i}@example.net"], data)
        await smtp.quit()

    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start


async def run_one(
    tmp: Path,
    raw: bytes,
    key: Path,
    clients: int,
    workers: int,
    engine: str | None,
    messages: int,
    unique: bool = False,
) -> tuple[float, float | None]:
    handler = CountingSink()
    sink = SinkController(handler)
    sink.start()
    data_dir = tmp / f"data-{engine}-{clients}-{workers}"
    cfg = tmp / f"{data_dir.name}.toml"
    cfg.write_text(config_text(data_dir, sink.port, workers, engine, key))
    proc, port, log = await start_server(cfg)
    try:
        warm = clients * 2
        await send(port, raw, warm, clients, 0, unique)
        if engine is not None and not await asyncio.to_thread(handler.wait_for, warm, 120):
            raise SystemExit("warm-up did not drain:\n" + "\n".join(log[-20:]))
        base = handler.count
        start = time.perf_counter()
        ingress_s = await send(port, raw, messages, clients, warm, unique)
        e2e: float | None = None
        if engine is not None:
            if not await asyncio.to_thread(handler.wait_for, base + messages, 300):
                raise SystemExit(
                    f"only {handler.count - base}/{messages} delivered:\n" + "\n".join(log[-20:])
                )
            e2e = messages / (time.perf_counter() - start)
        errors = [line for line in log if "failed closed" in line or "status=deferred" in line]
        if errors:
            print(f"  warning: {len(errors)} failures/deferrals, e.g. {errors[0]}")
        return messages / ingress_s, e2e
    finally:
        proc.terminate()
        await proc.wait()
        sink.stop()


async def main_async(args: argparse.Namespace) -> None:
    raw = (CORPUS / "size-typical.eml").read_bytes()
    print(
        f"message: size-typical.eml ({len(raw) // 1024} KB), {args.messages} messages per run after warm-up; "
        "default chain, every feature on, RSA-2048 (OpenSSL), smarthost out to an aiosmtpd sink"
        + ("; every message's HTML unique (--unique)" if args.unique else "")
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        key = write_key(tmp)
        bare: dict[int, float] = {}
        for clients in args.clients:
            bare[clients], _ = await run_one(tmp, raw, key, clients, 1, None, args.messages)
        print(
            f"{'engine':<11}{'clients':>8}{'workers':>8}{'ingress msg/s':>15}{'end-to-end msg/s':>18}"
            f"{'bare ingress msg/s':>20}"
        )
        for engine in args.engines:
            for clients in args.clients:
                for workers in args.workers:
                    ingress, e2e = await run_one(
                        tmp, raw, key, clients, workers, engine, args.messages, args.unique
                    )
                    print(
                        f"{engine:<11}{clients:>8}{workers:>8}{ingress:>15.1f}{e2e or 0:>18.1f}{bare[clients]:>20.1f}",
                        flush=True,
                    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--engines", nargs="+", default=["css_inline", "premailer"])
    ap.add_argument(
        "--unique", action="store_true", help="a different HTML text in every message (no cache hits)"
    )
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
