"""postmark_headers: X-PM-Tag, X-PM-Metadata-*, TrackOpens/TrackLinks, Message-Stream; malformed values refused."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import Credential
from pipeline.chain.driver import run_chain
from pipeline.contract.message import Message
from tests.support import SAMPLES, complete_message

CHAIN = ["campaign_tag", "postmark_headers", "click_tracking", "open_pixel"]


def headers(*lines: str) -> bytes:
    return complete_message(extra="".join(f"{line}\r\n" for line in lines))


def run(raw: bytes, **kw: Any) -> Any:
    return run_chain(raw, CHAIN, rcpt_tos=["r@example.org"], **kw)


def reply(raw: bytes) -> str | None:
    result = run(raw)
    return result.verdict.reply() if result.verdict is not None else None


def test_sample_maps_tag_metadata_switches_and_stream_and_strips_every_header():
    result = run((SAMPLES / "21-postmark-headers.eml").read_bytes())
    assert result.verdict is None
    assert result.ctx.tags == ["password-reset"] and result.ctx.campaign_id == "password-reset"
    assert result.ctx.metadata == {"user-id": "77", "request": "r-5521"}
    assert (result.ctx.features["trackclicks"], result.ctx.features["trackopens"]) == (True, False)
    assert result.ctx.notes["message_stream"] == "outbound"
    [copy] = result.copies
    assert b"x-pm-" not in copy.data.lower()
    html = Message(copy.data).html_parts()[0].text()
    assert "https://shop.example.com/account" not in html and "/c/" in html and "/o/" not in html


@pytest.mark.parametrize(("value", "on"), [("None", False), ("HtmlAndText", True), ("textonly", True)])
def test_track_links_values(value: str, on: bool):
    result = run(headers(f"X-PM-TrackLinks: {value}"), config={"features": {"trackclicks": not on}})
    assert result.ctx.features["trackclicks"] is on


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("X-PM-TrackOpens: yes", "550 5.6.0 Invalid X-PM-TrackOpens header: expected true or false"),
        ("X-PM-TrackLinks: Always", "550 5.6.0 Invalid X-PM-TrackLinks header: expected None, HtmlAndText, HtmlOnly or TextOnly"),
        ("X-PM-Message-Stream: Bad Stream", "550 5.6.0 Invalid X-PM-Message-Stream header: expected a stream id (a-z 0-9 -, up to 30)"),
        ("X-PM-Metadata-this-key-is-far-too-long: x",
         "550 5.6.0 Invalid X-PM-Metadata-this-key-is-far-too-long header: a metadata key is 1-20 characters A-Z a-z 0-9 _ . -"),
        ("X-PM-Tag: \x01", "550 5.6.0 Invalid X-PM-Tag header: a tag is 1-128 characters without control characters"),
    ],
)
def test_malformed_values_are_refused_naming_the_header(line: str, expected: str):
    assert reply(headers(line)) == expected


def test_two_tags_are_refused():
    assert reply(headers("X-PM-Tag: a", "X-PM-Tag: b")) == "550 5.6.0 Message has 2 X-PM-Tag: headers"


def test_switched_off_per_credential_nothing_applies_and_the_headers_still_go():
    cred = Credential(name="plain", features={"postmark": False})
    result = run(headers("X-PM-Tag: a", "X-PM-Metadata-k: v"), credential=cred)
    assert result.verdict is None and result.ctx.tags == [] and result.ctx.metadata == {}
    assert b"X-PM-" not in result.copies[0].data
