"""Messages per second through a real Postfix, with and without ``smtpgate milter`` (full chain).

    python benchmarks/bench_milter.py [--messages 240] [--rounds 3] [--clients 8] [--workers 0 2]

Private Postfix instances (tests/support/postfix.py) relay to one SMTP sink in this process: one plain,
and one per ``--workers`` value with ``smtpd_milters`` pointing at its own ``smtpgate milter``
(a child process running the default chain, every plugin on, an RSA-2048 DKIM key; ``--workers
N``: end of message in N processes, 0: in the milter's event loop). Rounds alternate between them
so all see the same machine load; each round sends the shared corpus (../shared/corpus/eml, else samples/)
round-robin with ``--clients`` concurrent SMTP connections and times from the first MAIL to the
last copy at the sink (after one untimed warm-up pass of the corpus). Printed: min / median / max
msg/s of each, and each milter set-up's median as a share of plain Postfix's.
Needs root (Postfix's daemons run as ``postfix``).
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import corpus_files, sample_files  # noqa: E402
from tests.support.milter_client import dkim_key  # noqa: E402
from tests.support.postfix import MilterProcess, Postfix  # noqa: E402
from tests.support.smtp_sink import start_sink  # noqa: E402


def send_all(port: int, messages: list[bytes], clients: int) -> None:
    """``clients`` threads, one SMTP connection each, taking messages from a shared list."""
    lock = threading.Lock()
    todo = list(enumerate(messages))
    errors: list[str] = []

    def worker() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
            while True:
                with lock:
                    if not todo:
                        return
                    i, raw = todo.pop()
                try:
                    smtp.sendmail("news@example.com", [f"reader{i}@example.org"], raw)
                except smtplib.SMTPException as exc:
                    errors.append(f"message {i}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} refused, first: {errors[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    files = corpus_files() or sample_files()[:9]
    corpus = [p.read_bytes() for p in files]
    messages = [corpus[i % len(corpus)] for i in range(args.messages)]
    base = Path(tempfile.mkdtemp(prefix="bench-milter-"))
    key, _ = dkim_key(base)
    config = base / "smtpgate.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{base / "data"}"\nlog_level = "info"\n'
        '[plugins.dkim_sign]\ndefault_domain = "example.com"\n'
        f'[plugins.dkim_sign.domains."example.com"]\nselector = "s1"\nkey_file = "{key}"\n'
    )
    controller, sink = start_sink()
    milters: list[MilterProcess] = []
    postfixes: list[Postfix] = []
    try:
        stacks: dict[str, Postfix] = {"postfix": Postfix(controller.port)}
        postfixes.append(stacks["postfix"])
        for n in args.workers:
            milter = MilterProcess(config, base, "--workers", str(n))
            milters.append(milter)
            pf = Postfix(controller.port, milter=f"inet:127.0.0.1:{milter.port}")
            postfixes.append(pf)
            stacks[f"postfix + milter, workers={n}"] = pf
        for pf in postfixes:
            pf.start()
        warmup = corpus * max(1, *args.workers)  # every worker process gets some
        for pf in postfixes:  # warm-up, not timed: imports, caches, Postfix's first processes
            before = len(sink.messages)
            send_all(pf.port, warmup, args.clients)
            sink.wait_for(lambda b=before: len(sink.messages) >= b + len(warmup), 600)
        rates: dict[str, list[float]] = {name: [] for name in stacks}
        for _ in range(args.rounds):
            for name, pf in stacks.items():
                before = len(sink.messages)
                start = time.perf_counter()
                send_all(pf.port, messages, args.clients)
                if not sink.wait_for(lambda b=before: len(sink.messages) >= b + len(messages), 600):
                    raise RuntimeError(f"{name}: not every message arrived\n{pf.read_log()[-3000:]}")
                rates[name].append(len(messages) / (time.perf_counter() - start))
        print(
            f"{len(messages)} messages per round ({len(corpus)} templates, "
            f"{sum(map(len, corpus)) // len(corpus)} "
            f"bytes on average), {args.clients} SMTP clients, {args.rounds} interleaved rounds"
        )
        plain = statistics.median(rates["postfix"])
        for name, values in rates.items():
            share = (
                "" if name == "postfix" else f"  ({statistics.median(values) / plain:.0%} of plain, medians)"
            )
            print(
                f"  {name:<30} msg/s  min {min(values):7.1f}  median {statistics.median(values):7.1f}  "
                f"max {max(values):7.1f}{share}"
            )
    finally:
        for pf in postfixes:
            pf.stop()
        for milter in milters:
            milter.stop()
        controller.stop()


if __name__ == "__main__":
    main()
