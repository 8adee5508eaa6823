"""ses_headers: X-SES-CONFIGURATION-SET and X-SES-MESSAGE-TAGS become metadata; malformed values refused."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import Credential
from pipeline.chain.driver import run_chain
from tests.support import SAMPLES, complete_message

CHAIN = ["campaign_tag", "ses_headers"]


def headers(*lines: str) -> bytes:
    return complete_message(extra="".join(f"{line}\r\n" for line in lines))


def run(raw: bytes, **kw: Any) -> Any:
    return run_chain(raw, CHAIN, rcpt_tos=["r@example.org"], **kw)


def test_sample_records_configuration_set_and_tags_and_strips_both_headers():
    result = run((SAMPLES / "22-ses-headers.eml").read_bytes())
    assert result.verdict is None
    assert result.ctx.metadata == {"ses:configuration-set": "marketing", "campaign": "spring", "team": "growth"}
    assert b"x-ses-" not in result.copies[0].data.lower()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("X-SES-MESSAGE-TAGS: campaign", "550 5.6.0 Invalid X-SES-MESSAGE-TAGS header: expected name=value pairs separated by commas"),
        ("X-SES-MESSAGE-TAGS: a=b c", "550 5.6.0 Invalid X-SES-MESSAGE-TAGS header: expected name=value pairs separated by commas"),
        ("X-SES-MESSAGE-TAGS: ses:x=1", "550 5.6.0 Invalid X-SES-MESSAGE-TAGS header: expected name=value pairs separated by commas"),
        ("X-SES-CONFIGURATION-SET: my set", "550 5.6.0 Invalid X-SES-CONFIGURATION-SET header: expected 1-64 characters from A-Z a-z 0-9 _ -"),
    ],
)
def test_malformed_values_are_refused_naming_the_header(line: str, expected: str):
    result = run(headers(line))
    assert result.verdict is not None and result.verdict.reply() == expected


def test_switched_off_per_credential_nothing_applies_and_the_headers_still_go():
    cred = Credential(name="plain", features={"ses": False})
    result = run(headers("X-SES-MESSAGE-TAGS: a=b"), credential=cred)
    assert result.verdict is None and result.ctx.metadata == {} and b"X-SES" not in result.copies[0].data
