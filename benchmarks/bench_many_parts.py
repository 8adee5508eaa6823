"""Per-plugin cost of a message with N small HTML parts (one link each): is it linear?

    python benchmarks/bench_many_parts.py [--sizes 200,1000,4000,10000] [--runs 3] [--before main]

Issue 10: 10,000 small HTML parts made click_tracking and open_pixel take ~12 s each (past the
chain timeout, so a 250 became a failure). Each plugin is timed by the chain itself (its own
hook time in the trace), on a freshly parsed message per run; the sizes are interleaved run by
run so machine noise hits every size alike. Prints min/median/max ms and ms per 1,000 parts.
With ``--before REF`` the same measurement also runs on that commit (extracted with ``git
archive`` into a temporary directory), each run alternating between the two trees in
subprocesses, so before and after share the machine's state; both tables are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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


def one_run(chain: Any, raw: bytes, plugin: str) -> float:
    result = asyncio.run(run_chain_async(raw, chain, rcpt_tos=["rcpt@example.org"]))
    errors = [e for e in result.trace.entries if e.error]
    if errors or result.verdict is not None and getattr(result.verdict, "code", 250) >= 400:
        raise SystemExit(f"{plugin}: {errors or result.verdict}")
    return sum(e.ms for e in result.trace.entries if e.plugin == plugin)


def measure(sizes: list[int], runs: int) -> dict[str, dict[int, list[float]]]:
    """ms per (plugin, size) for ``runs`` interleaved runs, in this process's tree."""
    raws = {n: many_parts(n) for n in sizes}
    out: dict[str, dict[int, list[float]]] = {}
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
            # only the loaded plugin's switch: naming another one is a config error since the registry
            base["features"] = {switch[plugin]: True}
            try:
                cfg = make_config({**base, "plugins": extra}, [plugin])
            except Exception:  # noqa: BLE001 - older commits have no [limits] keys for parts: drop them
                trimmed = {k: v for k, v in base.items() if k != "limits"}
                cfg = make_config({**trimmed, "plugins": extra}, [plugin])
            chain = make_chain(cfg)
            samples: dict[int, list[float]] = {n: [] for n in sizes}
            for _ in range(runs):
                for n in sizes:  # interleaved: every size sees the same machine state
                    samples[n].append(one_run(chain, raws[n], plugin))
            out[label] = samples
    return out


def table(title: str, results: dict[str, dict[int, list[float]]]) -> None:
    print(title)
    print(f"{'plugin':<24}{'parts':>7}{'min ms':>10}{'median':>10}{'max':>10}{'ms/1k parts':>13}")
    for plugin, by_size in results.items():
        for n, s in sorted(by_size.items()):
            med = statistics.median(s)
            print(f"{plugin:<24}{n:>7}{min(s):>10.1f}{med:>10.1f}{max(s):>10.1f}{med * 1000 / n:>13.2f}")


def run_tree(tree: Path, sizes: list[int]) -> dict[str, dict[int, list[float]]]:
    """One run of every size, in a subprocess importing ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = tree / "benchmarks" / Path(__file__).name  # its ROOT is then ``tree``
    if not script.exists():
        shutil.copy(Path(__file__), script)
    cmd = [sys.executable, str(script), "--json", "--runs", "1", "--sizes", ",".join(map(str, sizes))]
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return {p: {int(n): v for n, v in d.items()} for p, d in json.loads(out.splitlines()[-1]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200,1000,4000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", help="a git ref to compare with (e.g. main)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.json:
        print(json.dumps(measure(sizes, args.runs)))
        return
    if not args.before:
        table("this tree", measure(sizes, args.runs))
        return
    with tempfile.TemporaryDirectory() as tmp:
        before_tree = Path(tmp)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.before], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive.stdout, check=True)
        (before_tree / "benchmarks").mkdir(exist_ok=True)
        (before_tree / "benchmarks" / Path(__file__).name).unlink(
            missing_ok=True
        )  # this version measures both
        results: dict[str, dict[str, dict[int, list[float]]]] = {"before": {}, "after": {}}
        for _ in range(args.runs):
            for label, tree in (("before", before_tree), ("after", ROOT)):
                for plugin, by_size in run_tree(tree, sizes).items():
                    for n, v in by_size.items():
                        results[label].setdefault(plugin, {}).setdefault(n, []).extend(v)
        table(f"before ({args.before})", results["before"])
        print()
        table("after (this tree)", results["after"])


if __name__ == "__main__":
    main()
