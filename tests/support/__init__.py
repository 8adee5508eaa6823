"""Shared test helpers: where the golden inputs are, and a small complete message.

Fixtures live in ``tests/conftest.py``; every other helper module is in this package
(``smtp_sink``, ``tracking``, ``bounces``, ``egress_net``, ``milter_client``, ``postfix``,
``vendor_webhooks``), so a test imports helpers from one place: ``tests.support``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.contract.message import Message

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "samples"
# The shared corpus sits beside the checkout; a git worktree elsewhere names it with SMTPGATE_CORPUS.
CORPUS = Path(os.environ.get("SMTPGATE_CORPUS") or ROOT.parent / "shared" / "corpus") / "eml"


def corpus_files() -> list[Path]:
    """The real templates in ../shared/corpus/eml (empty list when shared/ is absent)."""
    return sorted(CORPUS.glob("*.eml")) if CORPUS.is_dir() else []


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*.eml"))


def html_part_texts() -> list[tuple[str, str]]:
    """Every HTML part of samples/ and the corpus as ``(file#index, decoded text)``: the golden
    inputs of the HTML and encoding fast-path tests."""
    found = []
    for path in sample_files() + corpus_files():
        try:
            msg = Message(path.read_bytes())
        except Exception:  # (a sample refused as a message has no parts to test)
            continue
        for i, part in enumerate(msg.html_parts()):
            found.append((f"{path.parent.name}/{path.name}#{i}", part.text()))
    return found


def parseable_messages() -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of every sample and corpus message that parses as a message (a few
    samples are refused as messages on purpose and never reach a worker)."""
    found = []
    for path in sample_files() + corpus_files():
        raw = path.read_bytes()
        try:
            Message(raw)
        except Exception:
            continue
        found.append((path.name, raw))
    return found


# Samples the default chain refuses at DATA by design (an invalid X-Campaign-Id, two From: headers):
# they never reach processing, so they have no copies to compare (test_deferred_encoding asserts the refusal).
REFUSED_AT_DATA = frozenset({"14-invalid-campaign-id.eml", "17-two-from-headers.eml"})


def processed_files() -> list[Path]:
    """Every sample and corpus file the default chain lets through to processing."""
    return [p for p in sample_files() + corpus_files() if p.name not in REFUSED_AT_DATA]


# Every processing feature of the default chain except DKIM (whose keys a test sets up itself).
PROCESSING_FEATURES = [
    "inlinecss", "trackclicks", "trackopens", "trackbounces", "campaign", "validate", "listunsubscribe",
]


def complete_message(
    *,
    sender: str = "Sender <sender@example.com>",
    to: str = "rcpt@example.org",
    subject: str = "hello",
    extra: str = "",
    content_type: str = "text/plain; charset=us-ascii",
    body: str = "body\r\n",
) -> bytes:
    """A small message with every header header_validation requires (``extra``: more header
    lines, CRLF-terminated, placed after Subject)."""
    return (
        "Message-Id: <m1@example.com>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n{body}"
    ).encode("ascii")
