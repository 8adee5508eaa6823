"""Milliseconds per message for each built-in plugin and for the whole chain, over ../shared/corpus/eml.

    python benchmarks/bench_plugins.py [--repeat N]

Each plugin is timed by the chain itself (the per-hook time in the trace, so chain overhead is
not charged to the plugin), one recipient per message, each message run ``--repeat`` times and
the median taken. "whole chain" is the wall time of admission + processing for one message
with every plugin on (parse, feature switches, control headers, serialisation included).
dkim_sign is included when plugins/dkim_sign/ exists, with throwaway keys in a temp dir.
css_inline runs with its result cache off (``cache_size = 0``): every run measures the engine,
as for a template the worker has not seen (with the cache, runs 2..N would time a dict lookup).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.chain.driver import make_chain, make_config, run_chain_async  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "eml"
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


def base_overrides(data_dir: Path) -> dict[str, Any]:
    return {
        "gateway": {"data_dir": str(data_dir)},
        "tracking": {"keys": {"k1": "bench-secret"}, "base_url": "https://t.example.net"},
        "features": {"inlinecss": True, "trackclicks": True, "trackopens": True, "dkim": True, "campaign": True,
                     "validate": True},
    }


def measure(
    files: list[Path], plugins: list[str], plugin_cfg: dict[str, Any], data_dir: Path, repeat: int, timed: str | None
) -> list[float]:
    """Median ms per message: of the hooks of plugin ``timed``, or of the whole run when ``None``."""
    cfg = make_config({**base_overrides(data_dir), "plugins": plugin_cfg}, plugins)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per message (median taken)")
    args = ap.parse_args()
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
            ("css_inline (premailer)", ["css_inline"], {"css_inline": {"engine": "premailer", "cache_size": 0}},
             "css_inline"),
            ("css_inline (css_inline)", ["css_inline"], {"css_inline": {"engine": "css_inline", "cache_size": 0}},
             "css_inline"),
            ("click_tracking", ["click_tracking"], {}, "click_tracking"),
            ("open_pixel", ["open_pixel"], {}, "open_pixel"),
        ]
        if have_dkim:
            rows += [
                ("dkim_sign RSA (dkimpy math)", ["dkim_sign"], {"dkim_sign": dkim_config(rsa_file, None, "dkimpy")},
                 "dkim_sign"),
                ("dkim_sign RSA (OpenSSL math)", ["dkim_sign"],
                 {"dkim_sign": dkim_config(rsa_file, None, "openssl")}, "dkim_sign"),
                ("dkim_sign RSA+Ed25519 (OpenSSL)", ["dkim_sign"],
                 {"dkim_sign": dkim_config(rsa_file, ed_file, "openssl")}, "dkim_sign"),
            ]
        all_plugins = ["header_validation", "campaign_tag", "css_inline", "click_tracking", "open_pixel"]
        chains: list[tuple[str, str, str | None]] = [("premailer", "openssl", None), ("css_inline", "openssl", None)]
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

        print(f"{len(files)} messages from {CORPUS} ({sum(p.stat().st_size for p in files) // 1024} KiB), "
              f"{args.repeat} runs each, median per message; 1 recipient")
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
        default_steps = {k: v for k, v in steps.items() if "(css_inline)" not in k and "dkimpy" not in k
                         and "Ed25519" not in k}
        top = max(default_steps, key=lambda k: default_steps[k])
        print(f"\ndominant step in the default chain: {top} ({default_steps[top]:.2f} ms/message, "
              f"{100 * default_steps[top] / sum(default_steps.values()):.0f}% of the plugin time)")


if __name__ == "__main__":
    main()
