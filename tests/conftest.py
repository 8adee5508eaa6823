"""Shared fixtures: paths to golden inputs, a generated TLS certificate, a fresh data dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
CORPUS = ROOT.parent / "shared" / "corpus" / "eml"


def corpus_files() -> list[Path]:
    """The real templates in ../shared/corpus/eml (empty list when shared/ is absent)."""
    return sorted(CORPUS.glob("*.eml")) if CORPUS.is_dir() else []


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*.eml"))


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


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert_file, key_file).

    Made by the same function the gateway uses when no certificate is configured.
    """
    from pipeline.ingress.tls import generate_self_signed

    d = tmp_path_factory.mktemp("tls")
    cert_file, key_file = d / "cert.pem", d / "key.pem"
    generate_self_signed(cert_file, key_file, "localhost")
    return cert_file, key_file


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory, also exported as SMTPGATE_DATA_DIR for CLI runs."""
    d = tmp_path / "data"
    monkeypatch.setenv("SMTPGATE_DATA_DIR", str(d))
    return d


@pytest.fixture
def sinks() -> Iterator[Callable[..., Any]]:
    """Start real aiosmtpd sinks on ephemeral ports: ``sinks(**kw) -> (controller, handler)``;
    every sink started is stopped at the end of the test."""
    from tests.smtp_sink import start_sink

    started: list[Any] = []

    def make(**kw: Any) -> Any:
        controller, handler = start_sink(**kw)
        started.append(controller)
        return controller, handler

    yield make
    for controller in started:
        controller.stop()
