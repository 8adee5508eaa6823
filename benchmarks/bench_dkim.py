"""DKIM signing cost: our signer beside stock dkimpy and the bare key operation, CPU ms per signature.

    python benchmarks/bench_dkim.py [--tree PATH ...] [--rounds 5] [--iterations 200] [--message FILE]

What is printed, per tree (``--tree``, repeatable; default this tree), as min / median / max of
interleaved rounds (each round one fresh subprocess per tree, the trees taking turns):

* ``ours rsa-sha256``: ``plugins.dkim_sign.sign_rsa`` (relaxed/relaxed, the gateway's ``h=``), on
  two equal messages in turn: as a worker signs the copies of one message (the signer reuses the
  previous copy's body pieces up to the first changed byte).
* ``ours rsa-sha256, new body``: the same on messages whose bodies differ from the first byte
  (the first copy of each message: the whole body canonicalised and hashed).
* ``dkimpy dkim.sign``: stock dkimpy, same arguments (its RSA arithmetic is pure Python).
* ``bare RSA-2048``: ``cryptography`` signing a precomputed SHA-256 digest (PKCS#1 v1.5): the floor.
* ``ours ed25519-sha256`` and ``bare Ed25519`` likewise.
* ``ours both, one copy``: an RSA and an Ed25519 signature of the same copy (a domain with both keys).
* ``overhead``: ours minus bare: what canonicalisation, hashing and folding cost.

CPU time of the measuring process (``time.process_time``), not wall time: the machine is shared.
The message is the one the gateway signs: ``Message(raw).as_bytes()`` of ``size-typical.eml``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "eml"
CASES = [
    "ours rsa-sha256",
    "ours rsa-sha256, new body",
    "dkimpy dkim.sign",
    "bare RSA-2048",
    "ours ed25519-sha256",
    "bare Ed25519",
    "ours both, one copy",
]


def cpu_ms(fn: Callable[[], object], iterations: int) -> float:
    """CPU milliseconds per call, after one warm-up call."""
    fn()
    start = time.process_time()
    for _ in range(iterations):
        fn()
    return (time.process_time() - start) * 1000 / iterations


def measure(tree: Path, message: Path, iterations: int) -> dict[str, float]:
    """One round in this process, importing the signer from ``tree``."""
    sys.path.insert(0, str(tree))
    import hashlib

    import dkim
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    from pipeline.contract.message import Message
    from plugins.dkim_sign import SigningKey, sign_ed25519, sign_rsa, signed_headers

    data = Message(message.read_bytes()).as_bytes()
    include = signed_headers([h.name for h in Message(data).headers])
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    key = SigningKey("example.com", "s1", rsa_key, pem, "e1", ed_key)
    digest = hashlib.sha256(data).digest()
    # Two equal messages taken in turn: the signer reuses the parse of the very same object (an RSA
    # and an Ed25519 signature of one copy), which would otherwise hide the per-copy cost.
    fresh = itertools.cycle([data, bytes(bytearray(data))])
    sep = data.index(b"\r\n\r\n") + 4
    new_body = itertools.cycle([data[:sep] + b"%d\r\n" % i + data[sep:] for i in range(2)])
    pad = padding.PKCS1v15()
    prehashed = Prehashed(hashes.SHA256())

    def both(message: bytes) -> object:
        return sign_rsa(message, key, include, "openssl"), sign_ed25519(message, key, include)

    fns: dict[str, tuple[Callable[[], object], int]] = {
        "ours rsa-sha256": (lambda: sign_rsa(next(fresh), key, include, "openssl"), iterations),
        "ours rsa-sha256, new body": (lambda: sign_rsa(next(new_body), key, include, "openssl"), iterations),
        "dkimpy dkim.sign": (
            lambda: dkim.sign(
                data,
                b"s1",
                b"example.com",
                pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
                linesep=b"\r\n",
            ),
            max(1, iterations // 10),  # pure-Python RSA: about 10x slower
        ),
        "bare RSA-2048": (lambda: rsa_key.sign(digest, pad, prehashed), iterations),
        "ours ed25519-sha256": (lambda: sign_ed25519(next(fresh), key, include), iterations),
        "ours both, one copy": (lambda: both(next(fresh)), iterations),
        "bare Ed25519": (lambda: ed_key.sign(digest), iterations),
    }
    return {name: cpu_ms(fn, n) for name, (fn, n) in fns.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, action="append", help="source tree to measure (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--message", type=Path, default=CORPUS / "size-typical.eml")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child: one round for this tree
    args = ap.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.message, args.iterations)))
        return
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    results: dict[Path, dict[str, list[float]]] = {t: {c: [] for c in CASES} for t in trees}
    for _ in range(args.rounds):
        for tree in trees:  # interleaved: every round measures every tree
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure",
                    str(tree),
                    "--message",
                    str(args.message),
                    "--iterations",
                    str(args.iterations),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=tree,
            ).stdout
            for case, value in json.loads(out).items():
                results[tree][case].append(value)
    print(
        f"message: {args.message.name} ({args.message.stat().st_size // 1024} KB); CPU ms per signature, "
        f"min / median / max of {args.rounds} interleaved rounds, {args.iterations} signatures each"
    )
    for tree in trees:
        print(f"\ntree {tree}")
        print(f"{'':<28}{'min':>8}{'median':>8}{'max':>8}")
        for case in CASES:
            v = results[tree][case]
            print(f"{case:<28}{min(v):>8.3f}{statistics.median(v):>8.3f}{max(v):>8.3f}")
        for ours, bare in (
            ("ours rsa-sha256", "bare RSA-2048"),
            ("ours rsa-sha256, new body", "bare RSA-2048"),
            ("ours ed25519-sha256", "bare Ed25519"),
        ):
            over = [o - b for o, b in zip(results[tree][ours], results[tree][bare], strict=True)]
            label = "overhead " + ours.removeprefix("ours ")
            print(f"{label:<28}{min(over):>8.3f}{statistics.median(over):>8.3f}{max(over):>8.3f}")


if __name__ == "__main__":
    main()
