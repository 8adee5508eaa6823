"""The scheduler's per-copy work done once where it can be (issue 17, main-process CPU per recipient),
with results equal to the simple computation: the message log's copy summaries (headers read once per
bytes object the copies share) and each result's outcome (built with its TLS outcome and source, no
``dataclasses.replace`` per recipient)."""

from __future__ import annotations

import dataclasses
import random

from pipeline.app.gateway import Gateway
from pipeline.chain.driver import make_config
from pipeline.chain.processing import CopyResult, copy_log
from pipeline.contract.verdicts import Reject
from pipeline.delivery.scheduler import copy_logs
from pipeline.egress.base import DeliveryResult
from pipeline.ports import RecipientOutcome
from pipeline.spool import QueuedMessage
from tests.support import corpus_files, sample_files


def simple_copy_logs(copies: list[CopyResult]) -> dict[str, dict]:
    return {c.recipient: copy_log(c) for c in copies}


def test_copy_logs_equal_one_copy_log_per_copy_on_every_sample_shared_or_not() -> None:
    files = sample_files() + corpus_files()
    assert files
    for path in files:
        data = path.read_bytes()
        shared = [CopyResult(f"r{i}@example.net", "a@example.org", data, trace=[{"n": i}]) for i in range(5)]
        own = [CopyResult(f"o{i}@example.net", "a@example.org", bytes(bytearray(data))) for i in range(3)]
        refused = [CopyResult("x@example.net", "a@example.org", None, Reject(550, "5.7.1", "no"), [{"n": 9}])]
        copies = shared + own + refused
        got = copy_logs(copies)
        assert got == simple_copy_logs(copies), path
        assert list(got) == list(simple_copy_logs(copies))
        assert got["r0@example.net"]["headers"] is got["r4@example.net"]["headers"]  # read once


def test_copy_logs_on_generated_copies_with_repeated_recipients() -> None:
    rng = random.Random(17)
    for _ in range(300):
        blobs = [
            b"Subject: " + bytes(rng.choice(b"ab\r\n: \t") for _ in range(rng.randint(0, 40)))
            for _ in range(3)
        ]
        copies = [
            CopyResult(rng.choice(["a@x", "b@x", "c@x"]), "f@x", rng.choice([*blobs, None]), trace=[{"i": i}])
            for i in range(rng.randint(0, 8))
        ]
        assert copy_logs(copies) == simple_copy_logs(copies)


def test_result_outcomes_equal_the_replaced_ones(tmp_path) -> None:
    config = make_config({"gateway": {"data_dir": str(tmp_path / "data")}})
    svc = Gateway(config).delivery_service(workers=0, clock=lambda: 1_000_100.0)
    msg = QueuedMessage(
        "Q1",
        "a@example.org",
        b"",
        {},
        1_000_000.0,
        ["x@example.net"],
        attempts={"x@example.net": 2},
        plugin_failures={"x@example.net": 1},
    )
    results = []
    for tls in ("none", "TLSv1.3 verified"):
        for source in ("", "192.0.2.7"):
            results += [
                dataclasses.replace(
                    DeliveryResult.from_reply("x@example.net", 250, "2.0.0 ok", "mx[1.2.3.4]:25"),
                    tls=tls,
                    source=source,
                ),
                dataclasses.replace(
                    DeliveryResult.from_reply("x@example.net", 550, "5.1.1 no", "mx"), tls=tls, source=source
                ),
                dataclasses.replace(
                    DeliveryResult.from_reply("x@example.net", 451, "4.3.0 busy", "mx"),
                    tls=tls,
                    source=source,
                ),
                dataclasses.replace(
                    DeliveryResult.postpone("x@example.net", 1_000_500.0, "held"), tls=tls, source=source
                ),
            ]
    for res in results:
        out = svc._result_outcome(msg, res)
        if res.status in ("sent", "bounced"):
            state = "delivered" if res.status == "sent" else "bounced"
            base = RecipientOutcome(
                "Q1", "x@example.net", state, 3, res.dsn, res.reply, res.relay, plugin_failures=1
            )
        else:
            base = svc._shaped(msg, res) or svc._defer(
                msg, res.recipient, res.dsn, res.reply, res.relay, False
            )
        assert out == dataclasses.replace(base, tls=res.tls, source=res.source), res
