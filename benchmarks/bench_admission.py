"""Main-process CPU per message at DATA, and the worker's transfer-encode cost per copy.

    python3 benchmarks/bench_admission.py [--runs 5] [--messages 300] [--tree /work/wt/baseline] [--admission]

Issue 17 items 2 and 3. At DATA the ingress process runs, for every message: the framing and
octet checks (``pipeline/ingress/data.py``), then the accept step (``pipeline/chain/accept.py``:
admission with the ``[limits]`` check and every ``on_message`` hook of the default chain,
serialisation, the message-log summary) with a spool that only takes the bytes. That is timed
with ``time.process_time`` for the 55 KB ``size-typical.eml`` of ../shared/corpus and for a
1 KB plain-text message. In the worker, the default chain's processing (CSS inlining, click
and open tracking, VERP, List-Unsubscribe, DKIM RSA-2048) runs for 10 recipients, and the CPU
time spent in transfer encoding (``binascii.b2a_qp``, ``base64.encodebytes``) is summed per
copy; for that message as it is (its links all point to ``#``, so only the pixel edits each
copy) and with its links made real URLs (links and pixel edit each copy).

With ``--tree`` the same measurement also runs on that tree (e.g. the pre-session baseline),
each run alternating between the two trees in fresh subprocesses (``PYTHONPATH`` = the tree),
so both see the same machine state; min/median/max over the runs are printed side by side.

``--admission`` times the admission step alone (:func:`admit_message` with the chain's admission
plugins only: header_validation, campaign_tag and the vendor dialects, suppression) on every
message of samples/ and the corpus, on a 10 KB message shaped like ``smtp-source``'s and on
``size-typical.eml``, and one ``metrics[key] += 1`` of the gateway's prometheus counters.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
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
TYPICAL = ROOT.parent / "shared" / "corpus" / "eml" / "size-typical.eml"
if not TYPICAL.exists():
    TYPICAL = Path("/work/shared/corpus/eml/size-typical.eml")
SIMPLE = (
    b"Message-Id: <simple.1@example.com>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
    b"From: Shop <app@example.com>\r\nTo: user@example.org\r\nSubject: Your order has shipped\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    + b"Hello, your order 12345 is on its way. Track it at https://example.com/track/12345\r\n"
    * 12
)
RECIPIENTS = [f"user{i}@example.org" for i in range(10)]


def config(directory: Path) -> Any:
    """The default chain, every feature on, DKIM with a fresh RSA-2048 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from pipeline.chain.driver import make_config
    from pipeline.config import ChainSection

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = directory / "k.pem"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    key_file.write_bytes(pem)
    features = ["inlinecss", "trackclicks", "trackopens", "trackbounces", "listunsubscribe", "dkim"]
    return make_config(
        {
            "gateway": {"data_dir": str(directory / "data")},
            "tracking": {
                "keys": {"k1": "bench"},
                "base_url": "https://t.example.net",
                "bounce_domain": "b.example.net",
            },
            "features": {name: True for name in features},
            "plugins": {
                "dkim_sign": {
                    "domains": {"example.com": {"selector": "s1", "key_file": str(key_file)}},
                    "default_domain": "example.com",
                }
            },
        },
        ChainSection().plugins,
    )


def with_links(raw: bytes) -> bytes:
    """``size-typical.eml`` links only to ``#``, which click tracking leaves alone: the same
    message with each of them a real URL, so links and pixel both edit the HTML of every copy."""
    parts = raw.split(b'href=3D"#"')
    return (
        b"".join(p + b'href=3D"https://shop.example.com/p/%d"' % i for i, p in enumerate(parts[:-1]))
        + parts[-1]
    )


class NullSpool:
    """Takes the bytes and keeps nothing: the spool's own cost is not what is measured here."""

    async def enqueue(self, ctx: Any, data: bytes, recipients: list[str]) -> None:
        return None


class NullEvents:
    async def emit(self, event: Any) -> None:
        return None


def stuff(raw: bytes) -> bytes:
    """The DATA octets as a client sends them (dot-stuffed)."""
    return raw.replace(b"\r\n.", b"\r\n..")


def at_data_us(step: Any, raw: bytes, n: int) -> float:
    """CPU microseconds per message for what the ingress process does with DATA."""
    from pipeline.ingress import data as framing

    stuffed = stuff(raw)
    loop = asyncio.new_event_loop()

    async def one() -> None:
        if framing.frame_checks(stuffed) is not None:
            raise SystemExit("framing refused the message")
        body = framing.unstuff(stuffed)
        if framing.check_content(body) is not None:
            raise SystemExit("octet checks refused the message")
        outcome = await step.accept(body, "app@example.com", ["user@example.org"])
        if outcome.status != "queued":
            raise SystemExit(f"not queued: {outcome.status} {outcome.verdict}")

    for _ in range(20):  # warm caches (content-type parses, regexes, imports)
        loop.run_until_complete(one())
    start = time.process_time()
    for _ in range(n):
        loop.run_until_complete(one())
    elapsed = time.process_time() - start
    loop.close()
    return elapsed / n * 1e6


def worker_copy(chain: Any, raw: bytes, n: int) -> tuple[float, float]:
    """(transfer-encode us per copy, processing ms per copy) for the default chain."""
    from pipeline.chain.admission import admit_message
    from pipeline.delivery.workers import run_processing

    spent = [0.0]

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()  # CPU time: a preempted call must not count the other processes
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.process_time() - t0

        return wrapper

    loop = asyncio.new_event_loop()
    verdict, ctx = loop.run_until_complete(admit_message(chain, raw, "app@example.com", RECIPIENTS))
    if ctx is None or verdict is not None:
        raise SystemExit(f"admission refused the message: {verdict}")
    record, data = ctx.to_record(), ctx.message.as_bytes()

    def once() -> None:
        copies = loop.run_until_complete(run_processing(chain, record, data, "app@example.com", RECIPIENTS))
        if any(c.data is None for c in copies):
            raise SystemExit(f"a copy failed: {[c.verdict for c in copies]}")

    once()
    try:  # this branch: every transfer encoding of an edited part goes through one method
        from pipeline.contract.mime import _PendingText  # type: ignore[attr-defined,unused-ignore]

        targets: list[tuple[Any, str]] = [(_PendingText, "encoded")]
    except ImportError:  # before: each edit called the encoders directly
        targets = [(binascii, "b2a_qp"), (base64, "encodebytes")]
    saved = [getattr(owner, name) for owner, name in targets]
    for (owner, name), fn in zip(targets, saved, strict=True):
        setattr(owner, name, timed(fn))
    try:
        start = time.process_time()
        for _ in range(n):
            once()
        elapsed = time.process_time() - start
    finally:
        for (owner, name), fn in zip(targets, saved, strict=True):
            setattr(owner, name, fn)
    loop.close()
    copies = n * len(RECIPIENTS)
    return spent[0] / copies * 1e6, elapsed / copies * 1e3




def source_like(size: int = 10_240) -> bytes:
    """A message shaped like Postfix's ``smtp-source -l SIZE`` sends (a few headers, filler lines)."""
    head = (
        b"From: <bench@example.com>\r\nTo: <rcpt@example.net>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
        b"Message-Id: <20261203100000.1@client.bench>\r\nSubject: bench\r\n\r\n"
    )
    line = b"La de da de da 1.\r\nLa de da de da 2.\r\nLa de da de da 3.\r\nLa de da de da 4.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def corpus_messages() -> list[bytes]:
    """Every message in samples/ and ../shared/corpus/eml."""
    dirs = [ROOT / "samples", TYPICAL.parent]
    return [p.read_bytes() for d in dirs for p in sorted(d.glob("*.eml"))]


def admission_us(chain: Any, raws: list[bytes], n: int) -> float:
    """CPU microseconds per message of the admission step alone (:func:`admit_message`: the
    header parse, the ``[limits]`` check, feature switches, every ``on_message`` hook)."""
    from pipeline.chain.admission import admit_message

    loop = asyncio.new_event_loop()

    async def all_of_them() -> None:
        for raw in raws:
            verdict, ctx = await admit_message(chain, raw, "app@example.com", ["user@example.org"])
            if ctx is None:
                raise SystemExit(f"unparseable: {verdict}")

    for _ in range(3):
        loop.run_until_complete(all_of_them())
    start = time.process_time()
    for _ in range(n):
        loop.run_until_complete(all_of_them())
    elapsed = time.process_time() - start
    loop.close()
    return elapsed / (n * len(raws)) * 1e6


def metrics_us(n: int) -> float:
    """CPU microseconds per ``metrics[key] += 1`` of the gateway's metrics (labelled counter)."""
    from pipeline.tracking.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    keys = ["accept_total:queued", "events_total:accepted", "smtp_connections_total:accepted"]
    start = time.process_time()
    for _ in range(n):
        for key in keys:
            metrics[key] += 1
    return (time.process_time() - start) / (n * len(keys)) * 1e6


def measure_admission(messages: int) -> dict[str, float]:
    """One run of ``--admission`` in this process's tree."""
    sys.path.insert(0, str(ROOT))
    from bench_compare import ADMISSION_PLUGINS  # (the list every tree runs, old ones included)

    from pipeline.chain.driver import make_chain, make_config

    chain = make_chain(make_config({}, ADMISSION_PLUGINS))
    every = corpus_messages()
    rounds = max(1, messages // len(every))
    return {
        f"admission, each of {len(every)} samples+corpus (us/msg)": admission_us(chain, every, rounds),
        "admission, 10 KB smtp-source message (us/msg)": admission_us(chain, [source_like()], messages),
        "admission, 55 KB typical (us/msg)": admission_us(chain, [TYPICAL.read_bytes()], messages),
        "metrics[key] += 1 (us)": metrics_us(messages * 10),
    }


def measure(messages: int) -> dict[str, float]:
    """One run in this process's tree."""
    sys.path.insert(0, str(ROOT))
    from pipeline.chain.accept import AcceptStep
    from pipeline.chain.driver import make_chain

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp))
        chain = make_chain(cfg)
        step = AcceptStep(cfg, chain, NullSpool(), NullEvents())  # type: ignore[arg-type]
        typical = TYPICAL.read_bytes()
        out = {
            "at DATA, 55 KB typical (us/msg)": at_data_us(step, typical, messages),
            "at DATA, 1 KB plain text (us/msg)": at_data_us(step, SIMPLE, messages),
        }
        for name, raw in (("typical", typical), ("typical, links tracked", with_links(typical))):
            encode_us, copy_ms = worker_copy(chain, raw, max(1, messages // 30))
            out[f"worker, {name}: transfer encoding (us/copy)"] = encode_us
            out[f"worker, {name}: processing (ms/copy)"] = copy_ms
        return out


def run_tree(tree: Path, messages: int, admission: bool = False) -> dict[str, float]:
    """One run in a subprocess importing ``tree``'s code (this script, not the tree's)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_ROOT": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--json", "--messages", str(messages)]
    cmd += ["--admission"] if admission else []
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    global ROOT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--messages", type=int, default=300, help="messages per run at DATA")
    ap.add_argument("--tree", help="another checkout to compare with (e.g. /work/wt/baseline)")
    ap.add_argument(
        "--admission",
        action="store_true",
        help="only the admission step (the admission plugins' on_message, limits, header reads) on "
        "every message of samples/ and the corpus, a smtp-source-like 10 KB one and size-typical; "
        "and the metrics counter increment",
    )
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json:
        ROOT = Path(os.environ.get("BENCH_ROOT", ROOT))
        print(json.dumps(measure_admission(args.messages) if args.admission else measure(args.messages)))
        return
    trees = [("before", Path(args.tree).resolve())] if args.tree else []
    trees.append(("after", ROOT))
    results: dict[str, dict[str, list[float]]] = {label: {} for label, _ in trees}
    for _ in range(args.runs):
        for label, tree in trees:  # interleaved: both trees see the same machine state
            for metric, value in run_tree(tree, args.messages, args.admission).items():
                results[label].setdefault(metric, []).append(value)
    print(f"{args.runs} interleaved runs, {args.messages} messages per run at DATA; min / median / max")
    for metric in results["after"]:
        cells = []
        for label, _ in trees:
            v = results[label][metric]
            cells.append(f"{label} {min(v):9.1f} {statistics.median(v):9.1f} {max(v):9.1f}")
        if len(trees) == 2:  # runs are paired (same moment): their differences are steadier than either side
            diffs = [a - b for a, b in zip(results["after"][metric], results["before"][metric], strict=True)]
            cells.append(f"after-before median {statistics.median(diffs):+8.1f}")
        print(f"{metric:<60} " + "   ".join(cells))


if __name__ == "__main__":
    main()
