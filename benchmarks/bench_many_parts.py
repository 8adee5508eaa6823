"""Per-plugin cost of a message with N small HTML parts (one link each): is it linear?

    python benchmarks/bench_many_parts.py [--sizes 200,1000,4000,10000] [--runs 3]
        [--before main | --tree /work/wt/baseline] [--plugins css_inline/premailer,...]

Issue 10: 10,000 small HTML parts made click_tracking and open_pixel take ~12 s each (past the
chain timeout, so a 250 became a failure). Each plugin is timed around its own hook calls, on
a freshly parsed message per run: wall time as the chain's trace records it, and the process's
CPU time (``time.process_time``), which other work on a shared machine disturbs much less. The
sizes are interleaved run by run so machine noise hits every size alike. Prints min/median/max
ms and ms per 1,000 parts, for wall and CPU time.
With ``--before REF`` the same measurement also runs on that commit (extracted with ``git
archive`` into a temporary directory), with ``--tree PATH`` on that checkout (e.g. a worktree of
main); each run alternates between the two trees in subprocesses, so before and after share the
machine's state; both tables are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if "--root" in sys.argv:  # a copy of this script measuring another tree (see run_tree)
    ROOT = Path(sys.argv[sys.argv.index("--root") + 1])
sys.path.insert(0, str(ROOT))

from pipeline.chain.driver import make_chain, make_config, run_chain_async  # noqa: E402

PLUGINS: list[tuple[str, str, dict[str, Any]]] = [  # (row label, plugin, its config)
    ("click_tracking", "click_tracking", {}),
    ("open_pixel", "open_pixel", {}),
    ("css_inline/premailer", "css_inline", {"css_inline": {"cache_size": 0, "engine": "premailer"}}),
    ("css_inline/css_inline", "css_inline", {"css_inline": {"cache_size": 0, "engine": "css_inline"}}),
]


def many_parts(n: int) -> bytes:
    """A multipart/mixed message with ``n`` tiny HTML parts, each one link (and a style block)."""
    head = (
        "From: bench@example.com\r\nTo: rcpt@example.org\r\nSubject: parts\r\nMessage-Id: <m@example.com>\r\n"
        "Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    )
    part = (
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><head><style>p{{color:red}}</style></head><body>"
        '<p><a href="https://example.com/p?id={i}&amp;x=1">link {i}</a></p></body></html>\r\n'
    )
    return (head + "".join(part.format(i=i) for i in range(n)) + "--b--\r\n").encode()


Samples = dict[str, dict[int, list[float]]]  # plugin row -> parts -> ms of each run


def cpu_meter(chain: Any, plugin: str) -> list[float]:
    """Wrap ``plugin``'s hooks in ``chain`` so each call adds its CPU seconds to the returned cell.

    The chain calls each hook through a ``_Call`` record (the same in every tree measured so far);
    the wrapper takes keyword arguments only, as the chain passes them."""
    spent = [0.0]

    def timed(func: Callable[..., Any]) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return func(**kwargs)
            finally:
                spent[0] += time.process_time() - start

        return call

    for calls in chain._calls.values():
        for i, call in enumerate(calls):
            if call.plugin == plugin:
                calls[i] = dataclasses.replace(call, func=timed(call.func))
    return spent


def one_run(chain: Any, raw: bytes, plugin: str, spent: list[float]) -> tuple[float, float]:
    """(wall ms, CPU ms) of ``plugin``'s hooks on one freshly parsed copy of ``raw``."""
    spent[0] = 0.0
    result = asyncio.run(run_chain_async(raw, chain, rcpt_tos=["rcpt@example.org"]))
    errors = [e for e in result.trace.entries if e.error]
    if errors or result.verdict is not None and getattr(result.verdict, "code", 250) >= 400:
        raise SystemExit(f"{plugin}: {errors or result.verdict}")
    return sum(e.ms for e in result.trace.entries if e.plugin == plugin), spent[0] * 1000


def measure(sizes: list[int], runs: int, only: list[str] | None = None) -> dict[str, Samples]:
    """{"wall": ..., "cpu": ...}: ms per (plugin, size) for ``runs`` interleaved runs, in this process's tree."""
    raws = {n: many_parts(n) for n in sizes}
    wall: Samples = {}
    cpu: Samples = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = {
            "gateway": {"data_dir": tmp},
            "tracking": {"keys": {"k1": "bench-secret"}, "base_url": "https://t.example.net"},
            "limits": {
                "max_mime_parts": 100_000,
                "max_html_parts": 100_000,
                "max_links": 1_000_000,
                "max_html_bytes": 1 << 30,
            },
            "chain": {"timeout": 600.0},
        }
        switch = {"css_inline": "inlinecss", "click_tracking": "trackclicks", "open_pixel": "trackopens"}
        for label, plugin, extra in PLUGINS:
            if only and label not in only:
                continue
            # only the loaded plugin's switch: naming another one is a config error since the registry
            base["features"] = {switch[plugin]: True}
            try:
                cfg = make_config({**base, "plugins": extra}, [plugin])
            except Exception:  # noqa: BLE001 - older commits have no [limits] keys for parts: drop them
                trimmed = {k: v for k, v in base.items() if k != "limits"}
                cfg = make_config({**trimmed, "plugins": extra}, [plugin])
            chain = make_chain(cfg)
            spent = cpu_meter(chain, plugin)
            wall[label] = {n: [] for n in sizes}
            cpu[label] = {n: [] for n in sizes}
            for _ in range(runs):
                for n in sizes:  # interleaved: every size sees the same machine state
                    w, c = one_run(chain, raws[n], plugin, spent)
                    wall[label][n].append(w)
                    cpu[label][n].append(c)
    return {"wall": wall, "cpu": cpu}


def table(title: str, results: dict[str, Samples]) -> None:
    print(title)
    print(
        f"{'plugin':<24}{'parts':>7}{'wall min':>10}{'median':>9}{'max':>9}{'CPU min':>10}{'median':>9}"
        f"{'max':>9}{'CPU ms/1k':>11}"
    )
    for plugin, by_size in results["wall"].items():
        for n, w in sorted(by_size.items()):
            c = results["cpu"][plugin][n]
            med = statistics.median(c)
            print(
                f"{plugin:<24}{n:>7}{min(w):>10.1f}{statistics.median(w):>9.1f}{max(w):>9.1f}"
                f"{min(c):>10.1f}{med:>9.1f}{max(c):>9.1f}{med * 1000 / n:>11.2f}"
            )
    print(f"({len(next(iter(next(iter(results['wall'].values())).values())))} runs each)")


def run_tree(tree: Path, sizes: list[int], only: str | None) -> dict[str, Samples]:
    """One run of every size, in a subprocess importing ``tree``'s code (this script copied in)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / Path(__file__).name
        shutil.copy(Path(__file__), script)
        cmd = [sys.executable, str(script), "--json", "--root", str(tree), "--runs", "1"]
        cmd += ["--sizes", ",".join(map(str, sizes))] + (["--plugins", only] if only else [])
        out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return {
        kind: {p: {int(n): v for n, v in d.items()} for p, d in rows.items()}
        for kind, rows in json.loads(out.splitlines()[-1]).items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200,1000,4000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--plugins", help="comma-separated rows to measure: " + ",".join(p[0] for p in PLUGINS))
    ap.add_argument("--before", help="a git ref to compare with (e.g. main)")
    ap.add_argument("--tree", type=Path, help="a checkout to compare with (e.g. a worktree of main)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)  # the tree a --json subprocess measures
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    only = args.plugins.split(",") if args.plugins else None
    if args.json:
        print(json.dumps(measure(sizes, args.runs, only)))
        return
    if not args.before and not args.tree:
        table("this tree", measure(sizes, args.runs, only))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.tree:
            before_tree, before_name = args.tree.resolve(), str(args.tree)
        else:
            before_tree, before_name = Path(tmp), args.before
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.before], check=True, capture_output=True
            )
            subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive.stdout, check=True)
        results: dict[str, dict[str, Samples]] = {
            "before": {"wall": {}, "cpu": {}},
            "after": {"wall": {}, "cpu": {}},
        }
        for _ in range(args.runs):
            for label, tree in (("before", before_tree), ("after", ROOT)):
                for kind, rows in run_tree(tree, sizes, args.plugins).items():
                    for plugin, by_size in rows.items():
                        for n, v in by_size.items():
                            results[label][kind].setdefault(plugin, {}).setdefault(n, []).extend(v)
        table(f"before ({before_name})", results["before"])
        print()
        table("after (this tree)", results["after"])


if __name__ == "__main__":
    main()
