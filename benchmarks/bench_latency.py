"""Where one SMTP session's time goes, step by step: smtpgate beside Haraka, Postfix and a bare aiosmtpd, same run.

    python benchmarks/bench_latency.py [--tree PATH ...] [--rounds 3] [--messages 1000] [--size-kb 10]

Why (issue 17, durable ingress at one session): ``smtp-source`` with one session measures one cycle
per message (connect, banner, EHLO, MAIL, RCPT, DATA, the body and its reply, QUIT), and its ratio
to Haraka says how long that cycle is, not which step makes it long. Here a blocking client on a
raw socket (``TCP_NODELAY``, one connection per message, as ``smtp-source`` sends) times each step
from sending the command to reading the last line of its reply. The per-step medians of a round
are kept; rounds interleave the servers; printed min / median / max over rounds, in microseconds.

Servers, as ``bench_compare.py --only ingress --ingress-alone`` starts them: Haraka accepting and
discarding (installed into ``~/.cache/smtpgate-bench`` on first use; skipped without npm), a private
Postfix that fsyncs each queue file before its ``250`` and then discards it (as root with Debian's
``postfix`` package; skipped otherwise): the durable reference, a bare aiosmtpd whose DATA handler
only answers 250, and per ``--tree`` ``smtpgate serve`` (the default
chain's admission plugins, durable SQLite spool, empty processing chain, null egress, delivery
running) and its ingress service alone (no delivery in the process).

The last lines time what a durable commit of one such message costs on this disk: SQLite in WAL
mode with ``synchronous=FULL`` and the spool's other pragmas, one message row inserted and
committed (then deleted, as delivery does), median of ``--messages``. smtpgate pays it inside its
``body`` step before the ``250``, as Postfix pays its queue file's; Haraka, discarding, writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(ROOT))

import bench_compare as bc  # noqa: E402
import bench_end_to_end as e2e  # noqa: E402

from pipeline.storage.sqlite import open_sqlite  # noqa: E402

STEPS = ("connect+banner", "EHLO", "MAIL", "RCPT", "DATA", "body", "QUIT", "cycle")


def message(size: int) -> bytes:
    """A ``size``-byte message shaped like ``smtp-source``'s: a few headers, 80-octet lines, the end."""
    head = b"From: <bench@example.com>\r\nTo: <rcpt@example.net>\r\nSubject: latency\r\n\r\n"
    line = b"x" * 78 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"


def last_line(replies: BinaryIO) -> bytes:
    """The last line of the next reply (a multiline reply's lines before it skipped), or b"" at EOF."""
    while True:
        line = replies.readline()
        if line[3:4] != b"-":
            return line


def sessions(port: int, n: int, body: bytes) -> dict[str, list[float]]:
    """``n`` sessions one after another, one message each; seconds per step."""
    steps: dict[str, list[float]] = {step: [] for step in STEPS}
    commands = (
        ("EHLO", b"EHLO client.bench\r\n"),
        ("MAIL", b"MAIL FROM:<bench@example.com>\r\n"),
        ("RCPT", b"RCPT TO:<rcpt@example.net>\r\n"),
        ("DATA", b"DATA\r\n"),
        ("body", body),
        ("QUIT", b"QUIT\r\n"),
    )
    for _ in range(n):
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            replies = sock.makefile("rb")
            banner = last_line(replies)
            if not banner.startswith(b"220"):
                raise RuntimeError(f"port {port}: banner {banner!r}")
            steps["connect+banner"].append(time.perf_counter() - start)
            for name, command in commands:
                sent = time.perf_counter()
                sock.sendall(command)
                answer = last_line(replies)
                steps[name].append(time.perf_counter() - sent)
                if answer[:1] not in (b"2", b"3"):
                    raise RuntimeError(f"port {port}: {name} answered {answer!r}")
        steps["cycle"].append(time.perf_counter() - start)
    return steps


def commit_floor(directory: Path, size: int, n: int) -> list[float]:
    """Seconds per durable insert + commit of one ``size``-byte message row, on a database opened
    as the spool opens its own (:func:`pipeline.storage.sqlite.open_sqlite`)."""
    conn = open_sqlite(directory / "floor.db")  # as the spool opens spool.db (WAL, synchronous=FULL ...)
    conn.execute("CREATE TABLE messages (queue_id TEXT PRIMARY KEY, data BLOB NOT NULL, context TEXT NOT NULL)")
    data, context = os.urandom(size), "{}" * 200
    times = []
    for i in range(n):
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO messages VALUES (?, ?, ?)", (f"q{i}", data, context))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - start)
        conn.execute("DELETE FROM messages")
    conn.close()
    return times


def span(values: list[float]) -> str:
    """min / median / max in microseconds."""
    return " / ".join(f"{v * 1e6:.0f}" for v in (min(values), statistics.median(values), max(values)))


async def run(args: argparse.Namespace) -> None:
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    print(f"{datetime.date.today().isoformat()}, {bc.cpu_model()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {args.size_kb} KB messages, {args.messages} sessions per round, "
          f"{args.rounds} interleaved rounds; per-step medians of each round, us: min / median / max")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        key = e2e.write_key(tmp)
        servers: list[bc.Server] = []
        try:
            named = [(f"smtpgate {tree.name}" if len(trees) == 1 else f"smtpgate {i}:{tree.name}", tree)
                     for i, tree in enumerate(trees)]
            await bc.start_ingress_servers(servers, tmp, key, named, args.workers, alone=True)
            body = message(args.size_kb * 1024)
            for server in servers:  # warm-up: imports, caches, workers started
                await asyncio.to_thread(sessions, server.port, 100, body)
            medians: dict[str, dict[str, list[float]]] = {s.name: {step: [] for step in STEPS} for s in servers}
            for r in range(args.rounds):
                for server in servers[r % len(servers):] + servers[: r % len(servers)]:
                    steps = await asyncio.to_thread(sessions, server.port, args.messages, body)
                    if server.settle is not None:  # its queue delivered before the next server runs
                        await server.settle()
                    for step, values in steps.items():
                        medians[server.name][step].append(statistics.median(values))
        finally:
            for server in servers:
                await server.stop()
        width = max(len(s.name) for s in servers) + 2
        print(f"{'step':<16}" + "".join(f"{s.name:>{max(width, 22)}}" for s in servers))
        for step in STEPS:
            print(f"{step:<16}" + "".join(f"{span(medians[s.name][step]):>{max(width, 22)}}" for s in servers))
        if servers[0].name == "Haraka":  # started first when it can run
            haraka = medians[servers[0].name]["cycle"]
            print("cycle of Haraka / cycle of each (its msg/s ratio to Haraka at one session), per round:")
            for s in servers[1:]:
                ratios = [h / c for h, c in zip(haraka, medians[s.name]["cycle"], strict=True)]
                print(f"  {s.name:<{width}}" + " / ".join(f"{v:.2f}" for v in sorted(ratios)))
        floor = commit_floor(tmp, args.size_kb * 1024, args.messages)
        print(f"durable commit of one {args.size_kb} KB message row on this disk (SQLite WAL, synchronous=FULL), "
              f"us min / median / max: {span(floor)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, action="append", help="source tree to run smtpgate from (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=1000, help="sessions per server per round")
    ap.add_argument("--size-kb", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
