"""Milliseconds per DKIM signature (dkimpy RSA vs OpenSSL RSA vs Ed25519) and per admission check,
over ../shared/corpus/eml, calling the plugins' functions directly (no chain overhead).

    python benchmarks/bench_plugins_a.py [--repeat N]

"RSA step only" isolates the private-key operation (what rsa_engine changes); "whole signature"
includes dkimpy's parse, canonicalisation and header hashing, which both engines share.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed  # noqa: E402
from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key  # noqa: E402

from pipeline.contract.context import MessageContext  # noqa: E402
from pipeline.contract.message import Message  # noqa: E402
from plugins.campaign_tag import CampaignTag  # noqa: E402
from plugins.dkim_sign import SigningKey, sign_ed25519, sign_rsa, signed_headers  # noqa: E402
from plugins.header_validation import HeaderValidation  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "eml"


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median of ``repeat`` timed calls, in milliseconds."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    files = sorted(CORPUS.glob("*.eml"))
    if not files:
        raise SystemExit(f"no .eml files in {CORPUS}")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    key = SigningKey("example.com", "s1", rsa_key, pem, "e1", ed25519.Ed25519PrivateKey.generate())

    from pipeline.contract.plugin import PluginEnv

    env = PluginEnv(hostname="bench.example.net", data_dir=Path("."))
    validator = HeaderValidation(HeaderValidation.Config(), env)
    tagger = CampaignTag(CampaignTag.Config(), env)

    def checks_for(data: bytes) -> dict[str, Callable[[], object]]:
        include = signed_headers([h.name for h in Message(data).headers])
        return {
            "header_validation.on_message": lambda: validator.on_message(MessageContext(Message(data))),
            "campaign_tag.on_message": lambda: tagger.on_message(MessageContext(Message(data))),
            "(parse only, for reference)": lambda: MessageContext(Message(data)),
            "RSA-2048 sign, whole signature, dkimpy math": lambda: sign_rsa(data, key, include, "dkimpy"),
            "RSA-2048 sign, whole signature, OpenSSL math": lambda: sign_rsa(data, key, include, "openssl"),
            "Ed25519 sign, whole signature (PyNaCl)": lambda: sign_ed25519(data, key, include),
        }

    rows: dict[str, list[float]] = {}
    for path in files:
        for name, fn in checks_for(Message(path.read_bytes()).as_bytes()).items():
            rows.setdefault(name, []).append(best_ms(fn, args.repeat))

    digest = hashlib.sha256(b"x")
    parsed = parse_pem_private_key(pem)
    rows["RSA-2048 step only, dkimpy (pure Python)"] = [
        best_ms(lambda: RSASSA_PKCS1_v1_5_sign(digest, parsed), args.repeat * 3)
    ]
    rows["RSA-2048 step only, OpenSSL (cryptography)"] = [
        best_ms(
            lambda: rsa_key.sign(digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256())),
            args.repeat * 3,
        )
    ]
    size = sum(p.stat().st_size for p in files) // 1024
    dkim_version = importlib.metadata.version("dkimpy")
    print(
        f"{len(files)} messages from {CORPUS} ({size} KiB), median of {args.repeat} runs; dkimpy {dkim_version}"
    )
    print(f"{'step':<48} {'mean ms':>8} {'median':>8} {'max':>8}")
    for name, values in rows.items():
        print(
            f"{name:<48} {statistics.mean(values):8.2f} {statistics.median(values):8.2f} {max(values):8.2f}"
        )


if __name__ == "__main__":
    main()
