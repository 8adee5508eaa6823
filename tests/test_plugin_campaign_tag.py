"""campaign_tag: ids validated from the raw bytes, recorded on the context, daily default campaign."""

from __future__ import annotations

import datetime
from typing import Any

import aiosmtplib
import pytest

from pipeline.app.harness import ingress_test_config, running_ingress, spooled
from pipeline.chain.driver import run_chain
from pipeline.config import ConfigError
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from tests.support import SAMPLES, complete_message, corpus_files, sample_files

BASE = complete_message(sender="sender@example.com")
INVALID_CAMPAIGN = "550 5.6.0 Invalid X-Campaign-Id header: expected 1-64 characters from A-Z a-z 0-9 _ -"
INVALID_LETTER = "550 5.6.0 Invalid X-Letter-Id header: expected 1-64 characters from A-Z a-z 0-9 _ -"


def tagged(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + BASE


def run(raw: bytes, config: dict[str, Any] | None = None, **overrides: Any) -> Any:
    cfg: dict[str, Any] = dict(overrides)
    if config is not None:
        cfg["plugins"] = {"campaign_tag": config}
    return run_chain(raw, ["campaign_tag"], config=cfg, rcpt_tos=["a@example.org", "b@example.org"])


def reply(raw: bytes) -> str | None:
    result = run(raw)
    return result.verdict.reply() if result.verdict is not None else None


def test_sample_ids_are_recorded_and_carried_to_every_copy():
    result = run((SAMPLES / "12-campaign-letter-ids.eml").read_bytes())
    assert result.verdict is None
    assert (result.ctx.campaign_id, result.ctx.letter_id) == ("spring_sale-2026", "order-83421_a")
    assert len(result.copies) == 2
    for copy in result.copies:
        out = Message(copy.data)
        assert out.get("X-Campaign-Id") == "spring_sale-2026"
        assert out.get("X-Letter-Id") == "order-83421_a"


def test_ids_survive_the_spool_record():
    result = run(tagged(b"X-Campaign-Id: weekly-42", b"x-letter-id: L_1"))
    record = result.ctx.to_record()
    assert (record["campaign_id"], record["letter_id"]) == ("weekly-42", "L_1")
    restored = MessageContext.from_record(record, Message(result.ctx.message.as_bytes()))
    assert (restored.campaign_id, restored.letter_id) == ("weekly-42", "L_1")
    copy = restored.for_recipient("a@example.org")
    assert (copy.campaign_id, copy.letter_id) == ("weekly-42", "L_1")


def test_sample_with_invalid_campaign_is_rejected_naming_the_header():
    assert reply((SAMPLES / "14-invalid-campaign-id.eml").read_bytes()) == INVALID_CAMPAIGN


@pytest.mark.parametrize(
    "line",
    [
        b"X-Campaign-Id: bad id!",
        b"X-Campaign-Id:",
        b"X-Campaign-Id: " + b"a" * 65,
        b"X-Campaign-Id: abc\r\n def",  # folded: unfolds to "abc def"
        b"X-Campaign-Id: abc\r\n\tBcc: victim@example.net",  # a header hidden in a continuation line
        b"X-Campaign-Id: =?utf-8?q?abc=0D=0ABcc:_victim@example.net?=",  # CRLF inside an encoded word
        b"X-Campaign-Id: abc%0D%0ABcc:victim@example.net",
        b"X-Campaign-Id: abc\x00def",
        "X-Campaign-Id: кампания".encode(),
        b"X-Campaign-Id: abc.def",
    ],
)
def test_invalid_campaign_values_from_raw_bytes_are_rejected(line):
    assert reply(tagged(line)) == INVALID_CAMPAIGN


@pytest.mark.parametrize("value", [b"a", b"A-z_0-9", b"a" * 64, b"2026-11-21"])
def test_valid_campaign_values_are_accepted(value):
    result = run(tagged(b"X-Campaign-Id:   " + value + b"  "))
    assert result.verdict is None
    assert result.ctx.campaign_id == value.decode()


def test_bare_line_break_cannot_smuggle_text_into_the_id():
    # A bare LF is a line end once normalised: the "injected" text becomes its own field and
    # the campaign id is exactly the part before it.
    result = run(tagged(b"X-Campaign-Id: abc\nX-Injected: yes"))
    assert result.verdict is None
    assert result.ctx.campaign_id == "abc"
    assert "\n" not in result.ctx.campaign_id and "\r" not in result.ctx.campaign_id


def test_invalid_letter_id_is_rejected_naming_it():
    assert reply(tagged(b"X-Campaign-Id: ok", b"X-Letter-Id: no/slashes")) == INVALID_LETTER


def test_two_campaign_headers_are_rejected():
    raw = tagged(b"X-Campaign-Id: one", b"X-Campaign-ID: two")
    assert reply(raw) == "550 5.6.0 Message has 2 X-Campaign-Id: headers"


def test_two_letter_headers_are_rejected():
    assert (
        reply(tagged(b"X-Letter-Id: one", b"X-Letter-Id: one"))
        == "550 5.6.0 Message has 2 X-Letter-Id: headers"
    )


def test_message_without_campaign_joins_the_daily_campaign():
    result = run(BASE)
    assert result.verdict is None
    day = datetime.datetime.fromtimestamp(result.ctx.received_at, datetime.UTC).strftime("%Y-%m-%d")
    assert result.ctx.campaign_id == day
    assert result.ctx.letter_id is None
    assert b"X-Campaign-Id" not in result.copies[0].data  # the default is recorded, not added to the mail


def test_daily_campaign_format_is_configurable_and_can_be_off():
    result = run(BASE, {"daily_campaign": "smtp-%Y%m%d"})
    day = datetime.datetime.fromtimestamp(result.ctx.received_at, datetime.UTC).strftime("smtp-%Y%m%d")
    assert result.ctx.campaign_id == day
    assert run(BASE, {"daily_campaign": ""}).ctx.campaign_id is None


def test_headers_are_removed_from_the_delivered_copy_when_not_kept():
    result = run(tagged(b"X-Campaign-Id: c1", b"X-Letter-Id: l1"), {"keep_headers": False})
    assert result.verdict is None
    assert (result.ctx.campaign_id, result.ctx.letter_id) == ("c1", "l1")
    for copy in result.copies:
        assert b"X-Campaign-Id" not in copy.data and b"X-Letter-Id" not in copy.data
    assert [(e.plugin, e.action, e.target) for e in result.ctx.message.edits] == [
        ("campaign_tag", "remove_header", "X-Campaign-Id"),
        ("campaign_tag", "remove_header", "X-Letter-Id"),
    ]


def test_campaign_switch_off_skips_validation_and_tagging():
    result = run(tagged(b"X-Campaign-Id: bad id!"), features={"campaign": False})
    assert result.verdict is None
    assert result.ctx.campaign_id is None


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"daily_campaign": "%Y %m"}, "plugins.campaign_tag.daily_campaign: '%Y %m' gives '2026 12'"),
        ({"keep_headers": "sometimes"}, "plugins.campaign_tag.keep_headers"),
        ({"keep": True}, "plugins.campaign_tag.keep: unknown key"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(config, fragment):
    with pytest.raises(ConfigError) as err:
        run(BASE, config)
    assert fragment in str(err.value)


@pytest.mark.parametrize("path", sample_files() + corpus_files(), ids=lambda p: p.name)
def test_golden_messages_are_tagged_or_get_the_documented_reply(path):
    result = run(path.read_bytes())
    if path.name == "14-invalid-campaign-id.eml":
        assert result.verdict.reply() == INVALID_CAMPAIGN
        return
    assert result.verdict is None
    assert result.ctx.campaign_id
    assert [e for e in result.ctx.message.edits if e.plugin == "campaign_tag"] == []


async def test_over_smtp_ids_reach_the_spool_and_a_bad_id_is_the_reply_to_data(data_dir):
    cfg = ingress_test_config(
        data_dir,
        chain=["campaign_tag"],
        credentials=[{"name": "office", "kind": "ip", "networks": ["127.0.0.1/32"]}],
    )
    async with running_ingress(cfg) as (_, ingress):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("plain"), timeout=10)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as err:
            await client.sendmail(
                "app@example.com", ["x@example.org"], (SAMPLES / "14-invalid-campaign-id.eml").read_bytes()
            )
        assert f"{err.value.code} {err.value.message}" == INVALID_CAMPAIGN
        errors, reply_text = await client.sendmail(
            "app@example.com",
            ["x@example.org", "y@example.org"],
            (SAMPLES / "12-campaign-letter-ids.eml").read_bytes(),
        )
        await client.quit()
    assert errors == {}
    [msg] = spooled(data_dir)
    assert reply_text.endswith(msg["queue_id"])
    assert (msg["context"]["campaign_id"], msg["context"]["letter_id"]) == (
        "spring_sale-2026",
        "order-83421_a",
    )
    assert msg["recipients"] == ["x@example.org", "y@example.org"]
