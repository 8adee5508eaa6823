"""Milliseconds per message for each built-in plugin and for the whole chain, over ../shared/corpus/eml.

    python benchmarks/bench_plugins.py [--repeat N]
    python benchmarks/bench_plugins.py --html [--message EML] [--tree DIR ...] [--runs N] [--repeat N]

Each plugin is timed by the chain itself (the per-hook time in the trace, so chain overhead is
not charged to the plugin), one recipient per message, each message run ``--repeat`` times and
the median taken. "whole chain" is the wall time of admission + processing for one message
with every plugin on (parse, feature switches, control headers, serialisation included).
dkim_sign is included when plugins/dkim_sign/ exists, with throwaway keys in a temp dir.
css_inline runs with its result cache off (``cache_size = 0``): every run measures the engine,
as for a template the worker has not seen (with the cache, runs 2..N would time a dict lookup).

``--html`` measures only the HTML plugins (css_inline with each engine, click_tracking,
open_pixel, and the three together) on one message (default ``size-typical.eml``), per worker:
the hook times the chain records, one recipient. ``unique`` rows give the message's HTML a new
comment each time (nothing can be remembered from the previous run, as for a message whose HTML
is its own); ``shared`` rows send the same bytes each time (a campaign's template). Each
``--tree`` (a source tree, e.g. ``/work/wt/baseline`` for before, ``.`` for after) runs in its own
subprocess; the trees alternate run by run (interleaved, so they share the machine's state) and
each prints min/median/max over all its samples.

``--copies`` measures what one more recipient costs a worker: the message (default
``size-typical.eml``, made unique each round) is admitted and transformed once with the default
chain, every feature on and RSA-2048 DKIM (OpenSSL), then ``--recipients`` copies are made as a
worker makes them (``for_recipient``, ``personalize_and_sign``, ``as_bytes``, the copies pickled
back): CPU time (``time.process_time``) of that loop divided by the number of copies. Trees
interleave as for ``--html`` (``--runs`` subprocesses each, ``--repeat`` rounds per subprocess).

    python benchmarks/bench_plugins.py --copies [--tree OLD --tree .] [--recipients 100]

``--unique`` measures a worker's whole share of one message whose HTML is its own (nothing
remembered from the message before): the spooled bytes parsed, the transform phase (CSS inlined
with the css_inline engine), ``--recipients`` copies personalised, signed (RSA-2048, OpenSSL)
and serialised, the copies pickled back, as ``run_processing`` does in a worker: CPU time
(``time.process_time``) per message. Admission runs before the clock starts. Trees interleave
as for ``--copies``.

    python benchmarks/bench_plugins.py --unique [--tree OLD --tree .] [--recipients 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.chain.driver import make_chain, make_config, run_chain_async  # noqa: E402

CORPUS = (
    Path(os.environ.get("SMTPGATE_CORPUS") or Path(__file__).resolve().parents[2] / "shared" / "corpus")
    / "eml"
)
RCPT = ["bench@example.org"]


def write_keys(d: Path) -> tuple[Path, Path]:
    """A throwaway RSA-2048 and Ed25519 key pair (PEM, as `smtpgate dkim keygen` writes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    rsa_file, ed_file = d / "rsa.pem", d / "ed25519.pem"
    fmt = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    rsa_file.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(*fmt))
    ed_file.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(*fmt))
    return rsa_file, ed_file


def dkim_config(rsa_file: Path, ed_file: Path | None, engine: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"selector": "bench", "key_file": str(rsa_file)}
    if ed_file is not None:
        entry.update(ed25519_selector="bench-ed", ed25519_key_file=str(ed_file))
    return {"domains": {"example.com": entry}, "default_domain": "example.com", "rsa_engine": engine}


SWITCH_OF = {
    "css_inline": "inlinecss",
    "click_tracking": "trackclicks",
    "open_pixel": "trackopens",
    "dkim_sign": "dkim",
    "campaign_tag": "campaign",
    "header_validation": "validate",
}


def base_overrides(data_dir: Path, plugins: list[str]) -> dict[str, Any]:
    """Every loaded plugin switched on (a switch no loaded plugin declares is a config error)."""
    return {
        "gateway": {"data_dir": str(data_dir)},
        "tracking": {"keys": {"k1": "bench-secret"}, "base_url": "https://t.example.net"},
        "features": {SWITCH_OF[p]: True for p in plugins if p in SWITCH_OF},
    }


def measure(
    files: list[Path],
    plugins: list[str],
    plugin_cfg: dict[str, Any],
    data_dir: Path,
    repeat: int,
    timed: str | None,
) -> list[float]:
    """Median ms per message: of the hooks of plugin ``timed``, or of the whole run when ``None``."""
    cfg = make_config({**base_overrides(data_dir, plugins), "plugins": plugin_cfg}, plugins)
    chain = make_chain(cfg)
    per_message = []
    for path in files:
        raw = path.read_bytes()
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            result = asyncio.run(run_chain_async(raw, chain, rcpt_tos=RCPT))
            wall = (time.perf_counter() - start) * 1000
            errors = [e for e in result.trace.entries if e.error]
            if errors or not result.copies or not result.copies[0].deliverable:
                raise SystemExit(f"{path.name}: {plugins} failed: {errors or result.verdict}")
            if timed is None:
                samples.append(wall)
            else:
                samples.append(sum(e.ms for e in result.trace.entries if e.plugin == timed))
        per_message.append(statistics.median(samples))
    return per_message


# Runs in a subprocess with PYTHONPATH set to one tree: only names that every tree has.
HTML_WORKER = r"""
import asyncio, json, sys, tempfile
from pipeline.chain.driver import make_chain, make_config, run_chain_async
raw, repeat = open(sys.argv[1], "rb").read(), int(sys.argv[2])
rows = [
    ("css_inline (premailer)", ["css_inline"], {"engine": "premailer"}),
    ("css_inline (css_inline)", ["css_inline"], {"engine": "css_inline"}),
    ("click_tracking", ["click_tracking"], {}),
    ("open_pixel", ["open_pixel"], {}),
    ("all three (premailer)", ["css_inline", "click_tracking", "open_pixel"], {"engine": "premailer"}),
    ("all three (css_inline)", ["css_inline", "click_tracking", "open_pixel"], {"engine": "css_inline"}),
]
SWITCHES = {"css_inline": "inlinecss", "click_tracking": "trackclicks", "open_pixel": "trackopens"}
out = {}
n = 0
with tempfile.TemporaryDirectory() as tmp:
    for label, plugins, css in rows:
        cfg = make_config({
            "gateway": {"data_dir": tmp},
            "tracking": {"keys": {"k1": "bench-secret"}, "base_url": "https://t.example.net"},
            "features": {switch: True for plugin, switch in SWITCHES.items() if plugin in plugins},
            "plugins": {"css_inline": {**css, "cache_size": 0}},
        }, plugins)
        chain = make_chain(cfg)
        for mode in ("unique", "shared"):
            samples = []
            for i in range(repeat + 1):  # the first run warms imports and caches up: not counted
                n += 1
                data = raw.replace(b"</body>", b"<!-- run %d -->\r\n</body>" % n, 1) if mode == "unique" else raw
                result = asyncio.run(run_chain_async(data, chain, rcpt_tos=["bench@example.org"]))
                if any(e.error for e in result.trace.entries) or not result.copies[0].deliverable:
                    raise SystemExit(f"{label}: {result.verdict}")
                if i:
                    samples.append(sum(e.ms for e in result.trace.entries if e.plugin in plugins))
            out[f"{label}, {mode}"] = samples
print(json.dumps(out))
"""


# Runs in a subprocess with PYTHONPATH set to one tree: only names that every tree has. IMPORTS and
# MEASURE are filled in: the loop over recipient copies (--copies) or one whole message (--unique).
_WORKER = r"""
import asyncio, json, pickle, sys, tempfile, time
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pipeline.chain.admission import admit_message
from pipeline.chain.driver import make_chain, make_config, submission_session
from pipeline.chain.processing import IMPORTS
from pipeline.chain.runner import Trace
from pipeline.config import ChainSection
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
raw, rounds, n, seed = open(sys.argv[1], "rb").read(), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
features = ["inlinecss", "trackclicks", "trackopens", "trackbounces", "dkim", "campaign", "validate", "listunsubscribe"]
samples = []
with tempfile.TemporaryDirectory() as tmp:
    key = Path(tmp) / "rsa.pem"
    fmt = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(*fmt))
    cfg = make_config({
        "gateway": {"data_dir": tmp},
        "tracking": {"keys": {"k1": "bench-secret"}, "base_url": "https://t.example.net",
                     "bounce_domain": "bounces.example.net"},
        "features": {f: True for f in features},
        "plugins": {"css_inline": {"engine": "css_inline"}, "dkim_sign": {
            "default_domain": "example.com", "rsa_engine": "openssl",
            "domains": {"example.com": {"selector": "bench", "key_file": str(key)}}}},
    }, ChainSection().plugins)
    chain = make_chain(cfg)
    loop = asyncio.new_event_loop()
    rcpts = [f"user{i}@example.org" for i in range(n)]
    for r in range(rounds + 1):  # the first round warms imports and caches up: not counted
        data = raw.replace(b"</body>", b"<!-- %s %d -->\r\n</body>" % (seed.encode(), r), 1)
        verdict, admitted = loop.run_until_complete(
            admit_message(chain, data, "sender@example.com", rcpts, session=submission_session(None)))
        assert admitted is not None and verdict is None, verdict
        spooled = admitted.message.as_bytes()  # the worker parses the spooled bytes again
MEASUREprint(json.dumps(samples))
"""
_PER_COPY = r"""
        ctx = MessageContext.from_record(admitted.to_record(), Message(spooled, "sender@example.com", rcpts))
        trace = Trace(ctx.queue_id)
        loop.run_until_complete(chain.run("on_transform", ctx=ctx, trace=trace))
        start = time.process_time()
        copies = []
        for rcpt in rcpts:
            copy = ctx.for_recipient(rcpt)
            first = len(trace.entries)
            v = loop.run_until_complete(personalize_and_sign(chain, copy, trace))
            assert v is None, v
            copies.append(CopyResult(rcpt, copy.message.mail_from or "", copy.message.as_bytes(), None,
                                     trace_summary(trace.entries[first:])))
        pickle.dumps(copies, pickle.HIGHEST_PROTOCOL)
        if r:
            samples.append((time.process_time() - start) * 1000 / n)
"""
_PER_MESSAGE = r"""
        record = admitted.to_record()
        start = time.process_time()
        ctx = MessageContext.from_record(record, Message(spooled, "sender@example.com", rcpts))
        copies = loop.run_until_complete(process_message(chain, ctx, Trace(ctx.queue_id), list(rcpts)))
        assert all(c.deliverable for c in copies), [c.verdict for c in copies]
        pickle.dumps(copies, pickle.HIGHEST_PROTOCOL)
        if r:
            samples.append((time.process_time() - start) * 1000)
"""
COPIES_WORKER = _WORKER.replace("IMPORTS", "CopyResult, personalize_and_sign, trace_summary").replace(
    "MEASURE", _PER_COPY.lstrip("\n"))
UNIQUE_WORKER = _WORKER.replace("IMPORTS", "process_message").replace("MEASURE", _PER_MESSAGE.lstrip("\n"))


def copies_trees(
    message: Path, trees: list[Path], runs: int, repeat: int, recipients: int, unique: bool = False
) -> None:
    """Worker CPU per recipient copy (or per unique message) in each tree, trees interleaved run by run."""
    results: dict[str, list[float]] = {str(t): [] for t in trees}
    script = UNIQUE_WORKER if unique else COPIES_WORKER
    for run in range(runs):
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            cmd = [sys.executable, "-c", script, str(message), str(repeat), str(recipients), str(run)]
            done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{tree}: {done.stderr.strip()}")
            results[str(tree)].extend(json.loads(done.stdout.splitlines()[-1]))
    what = "per message, HTML unique, transform included" if unique else "per recipient copy"
    print(
        f"{message.name}: worker CPU ms {what} (default chain, every feature on, RSA-2048), "
        f"{recipients} recipients, {runs} runs x {repeat} messages per tree, interleaved"
    )
    print(f"{'tree':<40}{'min':>8}{'median':>8}{'max':>8}")
    for tree, s in results.items():
        print(f"{tree[-40:]:<40}{min(s):8.3f}{statistics.median(s):8.3f}{max(s):8.3f}")


def html_trees(message: Path, trees: list[Path], runs: int, repeat: int) -> None:
    """The HTML plugins' per-message cost in each tree, trees interleaved run by run (see the docstring)."""
    results: dict[str, dict[str, list[float]]] = {str(t): {} for t in trees}
    for _ in range(runs):
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            cmd = [sys.executable, "-c", HTML_WORKER, str(message), str(repeat)]
            done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{tree}: {done.stderr.strip()}")
            for row, samples in json.loads(done.stdout.splitlines()[-1]).items():
                results[str(tree)].setdefault(row, []).extend(samples)
    print(
        f"{message.name}: HTML plugins, ms per message (hook time), {runs} runs x {repeat} per tree, interleaved"
    )
    rows = list(next(iter(results.values())))
    header = "".join(f"{t[-22:]:>28}" for t in results)
    print(f"{'plugin':<36}{header}")
    print(f"{'':<36}" + "".join(f"{'min / median / max':>28}" for _ in results))
    for row in rows:
        cells = []
        for tree_rows in results.values():
            s = tree_rows.get(row, [])
            cells.append(f"{min(s):8.2f} {statistics.median(s):8.2f} {max(s):8.2f}" if s else f"{'-':>26}")
        print(f"{row:<36}" + "".join(f"{c:>28}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per message (median taken)")
    ap.add_argument("--html", action="store_true", help="only the HTML plugins, on --message, per --tree")
    ap.add_argument("--message", type=Path, default=CORPUS / "size-typical.eml")
    ap.add_argument(
        "--tree", type=Path, action="append", help="a source tree to measure (repeatable; default: this one)"
    )
    ap.add_argument(
        "--runs", type=int, default=5, help="--html, --copies, --unique: interleaved rounds per tree"
    )
    ap.add_argument("--copies", action="store_true", help="worker CPU per recipient copy, per --tree")
    ap.add_argument(
        "--unique", action="store_true", help="worker CPU per unique message (parse, transform, copies)"
    )
    ap.add_argument(
        "--recipients", type=int, help="--copies, --unique: recipients per message (default 100, 1)"
    )
    args = ap.parse_args()
    if args.copies or args.unique:
        trees = [t.resolve() for t in args.tree or [ROOT]]
        recipients = args.recipients or (1 if args.unique else 100)
        copies_trees(args.message.resolve(), trees, args.runs, args.repeat, recipients, args.unique)
        return
    if args.html:
        trees = [t.resolve() for t in args.tree or [ROOT]]
        html_trees(args.message.resolve(), trees, args.runs, args.repeat)
        return
    files = sorted(CORPUS.glob("*.eml"))
    if not files:
        raise SystemExit(f"no .eml files in {CORPUS}")
    have_dkim = (ROOT / "plugins" / "dkim_sign").is_dir()
    large = next((i for i, p in enumerate(files) if p.name == "size-large.eml"), None)

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        rsa_file, ed_file = write_keys(tmpdir)
        rows: list[tuple[str, list[str], dict[str, Any], str | None]] = [
            ("header_validation", ["header_validation"], {}, "header_validation"),
            ("campaign_tag", ["campaign_tag"], {}, "campaign_tag"),
            (
                "css_inline (premailer)",
                ["css_inline"],
                {"css_inline": {"engine": "premailer", "cache_size": 0}},
                "css_inline",
            ),
            (
                "css_inline (css_inline)",
                ["css_inline"],
                {"css_inline": {"engine": "css_inline", "cache_size": 0}},
                "css_inline",
            ),
            ("click_tracking", ["click_tracking"], {}, "click_tracking"),
            ("open_pixel", ["open_pixel"], {}, "open_pixel"),
        ]
        if have_dkim:
            rows += [
                (
                    "dkim_sign RSA (dkimpy math)",
                    ["dkim_sign"],
                    {"dkim_sign": dkim_config(rsa_file, None, "dkimpy")},
                    "dkim_sign",
                ),
                (
                    "dkim_sign RSA (OpenSSL math)",
                    ["dkim_sign"],
                    {"dkim_sign": dkim_config(rsa_file, None, "openssl")},
                    "dkim_sign",
                ),
                (
                    "dkim_sign RSA+Ed25519 (OpenSSL)",
                    ["dkim_sign"],
                    {"dkim_sign": dkim_config(rsa_file, ed_file, "openssl")},
                    "dkim_sign",
                ),
            ]
        all_plugins = ["header_validation", "campaign_tag", "css_inline", "click_tracking", "open_pixel"]
        chains: list[tuple[str, str, str | None]] = [
            ("premailer", "openssl", None),
            ("css_inline", "openssl", None),
        ]
        if have_dkim:
            chains = [
                ("premailer", "dkimpy", None),
                ("premailer", "openssl", None),
                ("premailer", "openssl", "ed25519"),
                ("css_inline", "openssl", None),
                ("css_inline", "openssl", "ed25519"),
            ]
        for engine, rsa_engine, ed in chains:
            cfg: dict[str, Any] = {"css_inline": {"engine": engine, "cache_size": 0}}
            plugins = list(all_plugins)
            label = f"whole chain: {engine}"
            if have_dkim:
                plugins.append("dkim_sign")
                cfg["dkim_sign"] = dkim_config(rsa_file, ed_file if ed else None, rsa_engine)
                label += f", RSA ({rsa_engine})" + (" + Ed25519" if ed else "")
            rows.append((label, plugins, cfg, None))

        print(
            f"{len(files)} messages from {CORPUS} ({sum(p.stat().st_size for p in files) // 1024} KiB), "
            f"{args.repeat} runs each, median per message; 1 recipient"
        )
        if not have_dkim:
            print("plugins/dkim_sign/ not found: dkim_sign rows left out")
        print(f"{'step':<50}{'mean ms':>9}{'median':>9}{'max':>9}{'size-large':>12}")
        results: dict[str, float] = {}
        for label, plugins, cfg, timed in rows:
            ms = measure(files, plugins, cfg, tmpdir / "data", args.repeat, timed)
            results[label] = statistics.mean(ms)
            big = f"{ms[large]:12.2f}" if large is not None else f"{'-':>12}"
            print(f"{label:<50}{statistics.mean(ms):9.2f}{statistics.median(ms):9.2f}{max(ms):9.2f}{big}")
        steps = {k: v for k, v in results.items() if not k.startswith("whole chain")}
        default_steps = {
            k: v
            for k, v in steps.items()
            if "(css_inline)" not in k and "dkimpy" not in k and "Ed25519" not in k
        }
        top = max(default_steps, key=lambda k: default_steps[k])
        print(
            f"\ndominant step in the default chain: {top} ({default_steps[top]:.2f} ms/message, "
            f"{100 * default_steps[top] / sum(default_steps.values()):.0f}% of the plugin time)"
        )


if __name__ == "__main__":
    main()
