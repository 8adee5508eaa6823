"""mailerq_headers: x-mq-tag, -delayed, -maxdelivertime, -inlinecss and custom properties; the rest refused."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from pipeline import Credential
from pipeline.chain.driver import run_chain
from tests.support import SAMPLES, complete_message

CHAIN = ["campaign_tag", "mailerq_headers"]
NEW_YEAR_2036 = datetime.datetime(2036, 1, 1, tzinfo=datetime.UTC).timestamp()


def headers(*lines: str) -> bytes:
    return complete_message(extra="".join(f"{line}\r\n" for line in lines))


def run(raw: bytes, **kw: Any) -> Any:
    return run_chain(raw, CHAIN, rcpt_tos=["r@example.org"], **kw)


def test_sample_maps_tag_deadline_switch_and_custom_property_and_strips_every_header():
    result = run((SAMPLES / "23-mailerq-headers.eml").read_bytes())
    assert result.verdict is None
    assert result.ctx.tags == ["digest"] and result.ctx.campaign_id == "digest"
    assert result.ctx.metadata == {"order-id": "A-77"}
    assert result.ctx.deliver_by == NEW_YEAR_2036
    assert result.ctx.features["inlinecss"] is False
    assert b"x-mq-" not in result.copies[0].data.lower()


def test_delayed_sets_the_send_time():
    result = run(headers("x-mq-delayed: 2036-01-01T00:00:00+00:00"))
    assert result.ctx.not_before == NEW_YEAR_2036


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("x-mq-smarthost-hostname: relay.example.net", "550 5.6.0 Invalid x-mq-smarthost-hostname header: not supported by this gateway (see docs/plugins/mailerq_headers.md)"),
        ("x-mq-envelope: other@example.net", "550 5.6.0 Invalid x-mq-envelope header: not supported by this gateway (see docs/plugins/mailerq_headers.md)"),
        ("x-mq-delayed: next week", "550 5.6.0 Invalid x-mq-delayed header: expected a Unix timestamp or a date with a time zone"),
        ("x-mq-inlinecss: perhaps", "550 5.6.0 Invalid x-mq-inlinecss header: expected true or yes or 1 or false or no or 0"),
    ],
)
def test_malformed_or_unsupported_values_are_refused_naming_the_header(line: str, expected: str):
    result = run(headers(line))
    assert result.verdict is not None and result.verdict.reply() == expected


def test_switched_off_per_credential_nothing_applies_and_the_headers_still_go():
    cred = Credential(name="plain", features={"mailerq": False})
    result = run(headers("x-mq-tag: a", "x-mq-smarthost-hostname: relay.example.net"), credential=cred)
    assert result.verdict is None and result.ctx.tags == [] and b"x-mq-" not in result.copies[0].data
