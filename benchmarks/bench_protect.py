"""Milliseconds of ``protect()``, ``Protected.restore()`` and the css_inline engine on one message's HTML.

    python benchmarks/bench_protect.py [--message EML] [--tree DIR ...] [--runs N] [--rounds N] [--batch N]

The HTML parts of the message (default ``size-typical.eml`` of the shared corpus) are protected
(``protect``: the tag search and the tokens), restored from the css_inline library's output
(``restore``: ``CssInlineEngine._restore``, the wrapper's undoing of the protection) and inlined
by the whole engine (``engine``: protect, the Rust call, restore); the inlined part is then encoded
quoted-printable (``qp``: :func:`pipeline.contract.mime.qp_encode_crlf`, beside ``b2a_qp``, the C
function whose output it reproduces byte for byte). Each ``--tree`` (a source
tree, e.g. a detached worktree of main for before, ``.`` for after) runs in its own subprocess,
``--runs`` times, the trees alternating run by run (interleaved, so they share the machine's
state); each run times ``--rounds`` batches of ``--batch`` calls with ``time.thread_time`` (CPU
time of the thread: a shared machine's preemptions are not counted) and the report gives the
min/median/max over all batches of all runs of a tree, per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from binascii import b2a_qp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("SMTPGATE_CORPUS") or ROOT.parent / "shared" / "corpus")


def measure(root: str, message: str, rounds: int, batch: int) -> dict[str, list[float]]:
    """Per-call milliseconds of each step, one sample per batch (run inside the tree's subprocess)."""
    sys.path.insert(0, root)
    from pipeline.contract.message import Message
    from pipeline.contract.mime import qp_encode_crlf
    from pipeline.toolkit.html import protect
    from plugins.css_inline import CssInlineEngine

    texts = [part.text() for part in Message(Path(message).read_bytes()).html_parts()]
    engine = CssInlineEngine(False)
    prots = [protect(text) for text in texts]
    outs = [engine._inliner.inline(prot.text) for prot in prots]
    # the inlined part as its quoted-printable encoding starts from (UTF-8, LF line ends)
    inlined = [engine.inline(text).replace("\r\n", "\n").encode("utf-8") for text in texts]
    steps = {
        "protect": lambda: [protect(text) for text in texts],
        "restore": lambda: [engine._restore(prot, out) for prot, out in zip(prots, outs, strict=True)],
        "engine": lambda: [engine.inline(text) for text in texts],
        "qp": lambda: [qp_encode_crlf(data) for data in inlined],
        "b2a_qp": lambda: [b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", b"\r\n") for data in inlined],
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.thread_time()
            for _ in range(batch):
                step()
            samples[name].append((time.thread_time() - start) / batch * 1e3)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--message", default=str(CORPUS / "eml" / "size-typical.eml"))
    ap.add_argument("--tree", action="append", help="source tree to measure (repeatable; default: this one)")
    ap.add_argument("--runs", type=int, default=5, help="subprocesses per tree")
    ap.add_argument("--rounds", type=int, default=20, help="batches per subprocess")
    ap.add_argument("--batch", type=int, default=50, help="calls per batch")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure(args.root, args.message, args.rounds, args.batch)))
        return
    trees = [str(Path(t).resolve()) for t in (args.tree or [str(ROOT)])]
    results: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    for _ in range(args.runs):
        for tree in trees:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--json", "--root", tree]
            cmd += ["--message", args.message, "--rounds", str(args.rounds), "--batch", str(args.batch)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree).stdout
            for name, values in json.loads(out).items():
                results[tree].setdefault(name, []).extend(values)
    print(
        f"{Path(args.message).name}: ms per call, min / median / max over {args.runs} x {args.rounds} batches"
    )
    for name in next(iter(results.values())):
        for tree in trees:
            values = results[tree][name]
            print(
                f"  {name:8s} {tree:40s} {min(values):7.3f} {statistics.median(values):7.3f} {max(values):7.3f}"
            )


if __name__ == "__main__":
    main()
