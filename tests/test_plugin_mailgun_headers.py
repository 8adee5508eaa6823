"""mailgun_headers: X-Mailgun-* tags, tracking switches, variables, deliver-by; malformed values refused."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from pipeline import Credential
from pipeline.chain.driver import run_chain
from pipeline.contract.message import Message
from tests.support import SAMPLES, complete_message

CHAIN = ["campaign_tag", "mailgun_headers", "click_tracking", "open_pixel"]
HTML = "text/html; charset=utf-8"
BODY = '<html><body><a href="https://example.com/a">a</a></body></html>\r\n'


def headers(*lines: str) -> bytes:
    return complete_message(extra="".join(f"{line}\r\n" for line in lines), content_type=HTML, body=BODY)


def run(raw: bytes, **kw: Any) -> Any:
    return run_chain(raw, CHAIN, rcpt_tos=["r@example.org"], **kw)


def reply(raw: bytes) -> str | None:
    result = run(raw)
    return result.verdict.reply() if result.verdict is not None else None


def test_sample_maps_tags_variables_and_switches_and_strips_every_header():
    result = run((SAMPLES / "20-mailgun-headers.eml").read_bytes())
    assert result.verdict is None
    assert result.ctx.tags == ["receipts", "billing-march"] and result.ctx.campaign_id == "receipts"
    assert result.ctx.metadata == {"order_id": "83423", "plan": "pro"}
    assert (result.ctx.features["trackclicks"], result.ctx.features["trackopens"]) == (False, True)
    assert result.ctx.notes["mailgun"] == {"x-mailgun-require-tls": True}
    [copy] = result.copies
    assert b"x-mailgun" not in copy.data.lower()
    html = Message(copy.data).html_parts()[0].text()
    assert 'href="https://shop.example.com/account?ref=mailgun"' in html and "/o/" in html


@pytest.mark.parametrize(
    ("lines", "clicks", "opens"),
    [
        (["X-Mailgun-Track: no"], False, False),
        (["X-Mailgun-Track: no", "X-Mailgun-Track-Opens: yes"], False, True),
        (["X-Mailgun-Track-Clicks: htmlonly", "X-Mailgun-Track-Opens: NO"], True, False),
        (["X-Mailgun-Track: yes", "X-Mailgun-Track-Clicks: false"], False, True),
    ],
)
def test_the_specific_tracking_headers_override_the_general_one(lines: list[str], clicks: bool, opens: bool):
    result = run(headers(*lines), config={"features": {"trackclicks": True, "trackopens": True}})
    assert (result.ctx.features["trackclicks"], result.ctx.features["trackopens"]) == (clicks, opens)


def test_deliver_by_becomes_the_message_deadline():
    result = run(headers("X-Mailgun-Deliver-By: Thu, 13 Oct 2033 18:02:00 +0000"))
    when = datetime.datetime(2033, 10, 13, 18, 2, tzinfo=datetime.UTC).timestamp()
    assert result.ctx.deliver_by == when and result.ctx.to_record()["deliver_by"] == when


def test_several_variables_headers_merge():
    result = run(headers('X-Mailgun-Variables: {"a": 1}', 'X-Mailgun-Variables: {"b": {"c": [1, 2]}}'))
    assert result.ctx.metadata == {"a": 1, "b": {"c": [1, 2]}}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("X-Mailgun-Track: maybe", "550 5.6.0 Invalid X-Mailgun-Track header: expected yes or true or no or false"),
        ("X-Mailgun-Track-Clicks: 1", "550 5.6.0 Invalid X-Mailgun-Track-Clicks header: expected yes or true or htmlonly or no or false"),
        ("X-Mailgun-Variables: {oops}", "550 5.6.0 Invalid X-Mailgun-Variables header: not JSON (Expecting property name enclosed in double quotes at character 1)"),
        ("X-Mailgun-Variables: [1]", "550 5.6.0 Invalid X-Mailgun-Variables header: expected a JSON object"),
        ("X-Mailgun-Deliver-By: soon", "550 5.6.0 Invalid X-Mailgun-Deliver-By header: expected a Unix timestamp or a date with a time zone"),
        ("X-Mailgun-Require-TLS: sure", "550 5.6.0 Invalid X-Mailgun-Require-TLS header: expected yes or true or no or false"),
        ("X-Mailgun-Skip-Verification: 2", "550 5.6.0 Invalid X-Mailgun-Skip-Verification header: expected yes or true or no or false"),
    ],
)
def test_malformed_values_are_refused_naming_the_header(line: str, expected: str):
    assert reply(headers(line)) == expected


def test_deeply_nested_variables_are_a_550_not_a_crash():
    raw = headers("X-Mailgun-Variables: " + '{"a": ' * 100_000 + "1" + "}" * 100_000)
    assert reply(raw) == "550 5.6.0 Invalid X-Mailgun-Variables header: not JSON (nested too deeply)"


def test_more_than_three_tags_are_refused():
    raw = headers(*(f"X-Mailgun-Tag: t{i}" for i in range(4)))
    assert reply(raw) == "550 5.6.0 Invalid X-Mailgun-Tag header: at most 3 tags per message"


def test_switched_off_per_credential_nothing_applies_and_the_headers_still_go():
    cred = Credential(name="plain", features={"mailgun": False})
    result = run(headers("X-Mailgun-Tag: a", "X-Mailgun-Track: no"), credential=cred)
    assert result.verdict is None and result.ctx.tags == [] and result.ctx.features["trackclicks"] is True
    assert b"X-Mailgun" not in result.copies[0].data
