"""Egress CPU per copy: the main process's cost of handing copies to a smarthost, pipelined or not.

    python benchmarks/bench_egress.py [--copies 2000] [--connections 4] [--rounds 7] [--baseline /work/main]

Sends ``--copies`` single-recipient copies of the 55 KB ``size-typical.eml`` through ``SmtpEgress``
over ``--connections`` pooled connections to Postfix's ``smtp-sink`` (a C sink: its CPU is not
ours), and prints the sending process's CPU time (``time.process_time``) per copy. Two sinks run
side by side, one offering PIPELINING and one started with ``-p`` (not offering it), so the same
code is measured on both paths: ``pipelined`` (MAIL, RCPT and DATA in one write, RFC 2920) and
``not pipelined`` (command by command, as every copy went before). ``--baseline TREE`` adds a third
mode: another source tree's code (e.g. main) against the PIPELINING sink.

Each measurement runs in a fresh child process (connections opened and warmed up first, then one
timed ``deliver`` of all copies); rounds are interleaved, mode order rotating per round, and each
mode's min / median / max over the rounds is printed. The machine is shared: compare modes within
one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("SMTPGATE_CORPUS") or ROOT.parent / "shared" / "corpus") / "eml"
sys.path.insert(0, str(ROOT))

from tests.support.postfix_sink import offers_pipelining, start_smtp_sink  # noqa: E402


def start_sink(pipelining: bool) -> tuple[subprocess.Popen[bytes], int]:
    """smtp-sink offering PIPELINING, or (``-p``) not."""
    return start_smtp_sink(*([] if pipelining else ["-p"]), backlog=256)


async def child(port: int, copies: int, connections: int) -> dict[str, float]:
    """One measurement in this process: warm the pool up, then time one ``deliver`` of every copy."""
    from pipeline.config import EgressSection
    from pipeline.egress.base import Copy
    from pipeline.egress.smtp import SmtpEgress

    raw = (CORPUS / "size-typical.eml").read_bytes()
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    egress = SmtpEgress(EgressSection(type="smtp", host="127.0.0.1", port=port, tls="none",
                                      connections_per_hop=connections), "bench.test")
    batch = [Copy(f"Q{i}", f"rcpt{i}@example.net", "bounce@example.com", data) for i in range(copies)]
    try:
        warm = await egress.deliver(batch[: connections * 4])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        results = await egress.deliver(batch)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await egress.close()
    bad = [r for r in warm + results if r.status != "sent"]
    if bad:
        raise SystemExit(f"{len(bad)} copies not sent, e.g. {bad[0]}")
    return {"cpu_ms_per_copy": cpu * 1000 / copies, "copies_per_s": copies / wall}


def run_child(tree: Path, port: int, copies: int, connections: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "SMTPGATE_CORPUS": str(CORPUS.parent)}
    out = subprocess.run([sys.executable, __file__, "--child", str(tree), str(port), str(copies), str(connections)],
                         env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline", type=Path, help="another source tree (e.g. /work/main) measured beside")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tree, port, copies, connections = args.child
        sys.path.insert(0, tree)
        print(json.dumps(asyncio.run(child(int(port), int(copies), int(connections)))))
        return

    piped_sink, piped_port = start_sink(pipelining=True)
    plain_sink, plain_port = start_sink(pipelining=False)
    try:
        assert offers_pipelining(piped_port) and not offers_pipelining(plain_port)
        modes = {"pipelined": (ROOT, piped_port), "not pipelined": (ROOT, plain_port)}
        if args.baseline:
            modes[f"baseline {args.baseline}"] = (args.baseline.resolve(), piped_port)
        names = list(modes)
        got: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        print(f"{args.copies} copies of size-typical.eml ({(CORPUS / 'size-typical.eml').stat().st_size} bytes) over "
              f"{args.connections} connections to smtp-sink, {args.rounds} interleaved rounds; "
              f"CPU {_cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                tree, port = modes[name]
                got[name].append(run_child(tree, port, args.copies, args.connections))
            print(f"  round {r + 1}: " + ", ".join(f"{n} {got[n][-1]['cpu_ms_per_copy']:.3f}" for n in names),
                  flush=True)
    finally:
        for sink in (piped_sink, plain_sink):
            sink.terminate()
            sink.wait(5)
    print("\nmain-process CPU ms per copy (min / median / max), copies/s median")
    medians = {}
    for name in names:
        cpu = [g["cpu_ms_per_copy"] for g in got[name]]
        rate = statistics.median(g["copies_per_s"] for g in got[name])
        medians[name] = statistics.median(cpu)
        print(f"  {name:<{max(map(len, names))}}  {min(cpu):.3f} / {medians[name]:.3f} / {max(cpu):.3f}   {rate:.0f}/s")
    base = medians["not pipelined"]
    for name in names:
        if name != "not pipelined":
            print(f"  {name}: {medians[name] / base:.2f}x the CPU of not pipelined ({medians[name] - base:+.3f} ms/copy)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
