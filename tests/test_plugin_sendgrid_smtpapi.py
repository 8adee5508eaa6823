"""sendgrid_smtpapi: X-SMTPAPI expands recipients, substitutes per copy, maps categories, args, filters, send_at."""

from __future__ import annotations

import datetime
import json
import sqlite3
from typing import Any

import aiosmtplib
import pytest
from click.testing import CliRunner

from pipeline import Credential
from pipeline.app.cli import main
from pipeline.app.harness import ingress_test_config, running_ingress, spooled
from pipeline.chain.driver import run_chain
from pipeline.contract.message import Message
from tests.support import SAMPLES, complete_message

CHAIN = ["campaign_tag", "sendgrid_smtpapi", "suppression", "click_tracking", "open_pixel"]


def smtpapi(api: dict[str, Any] | str, body: str = "Hi -name-\r\n", subject: str = "Hello -name-") -> bytes:
    value = api if isinstance(api, str) else json.dumps(api)
    return complete_message(subject=subject, extra=f"X-SMTPAPI: {value}\r\n", body=body)


def run(raw: bytes, rcpts: list[str] | None = None, **kw: Any) -> Any:
    return run_chain(raw, CHAIN, rcpt_tos=rcpts or ["placeholder@example.com"], **kw)


def reply(raw: bytes, **kw: Any) -> str | None:
    result = run(raw, **kw)
    return result.verdict.reply() if result.verdict is not None else None


def out_bytes(result: Any, rcpt: str) -> bytes:
    return next(c.data for c in result.copies if c.recipient == rcpt)


def test_sample_expands_recipients_substitutes_and_strips_the_header():
    result = run((SAMPLES / "19-sendgrid-smtpapi.eml").read_bytes())
    assert result.verdict is None
    assert result.ctx.message.rcpt_tos == ["ann.lee@example.org", "bob.stone@example.net"]
    assert result.ctx.tags == ["welcome", "onboarding"] and result.ctx.campaign_id == "welcome"
    assert result.ctx.metadata == {"user_id": "1001", "source": "signup"}
    assert result.ctx.features["trackclicks"] is False and result.ctx.features["trackopens"] is True
    out = {c.recipient: Message(c.data) for c in result.copies}
    assert set(out) == {"ann.lee@example.org", "bob.stone@example.net"}
    ann, bob = out["ann.lee@example.org"], out["bob.stone@example.net"]
    assert ann.get("To") == '"Ann Lee" <ann.lee@example.org>' and bob.get("To") == "bob.stone@example.net"
    assert ann.get("Subject") == "Welcome, Ann: your Pro plan" and bob.get("Subject") == "Welcome, Bob: your Free plan"
    assert "Hello Ann, thanks for choosing Pro." in ann.html_parts()[0].text()
    assert "Hello Bob, thanks for choosing Free." in bob.html_parts()[0].text()
    assert b"bob.stone" not in out_bytes(result, "ann.lee@example.org")  # no copy names the other recipients
    assert b"ann.lee" not in out_bytes(result, "bob.stone@example.net")
    for copy in result.copies:
        assert b"x-smtpapi" not in copy.data.lower()
        html = Message(copy.data).html_parts()[0].text()
        assert 'href="https://shop.example.com/account?ref=sendgrid"' in html  # clicktrack off: links untouched
        assert "/o/" in html  # opentrack on: the pixel


def test_filters_turn_tracking_off_and_on():
    api = {"filters": {"clicktrack": {"settings": {"enable": 1}}, "opentrack": {"settings": {"enable": "0"}},
                       "subscriptiontrack": {"settings": {"enable": 1}}}}
    result = run(smtpapi(api))
    assert result.verdict is None
    assert (result.ctx.features["trackclicks"], result.ctx.features["trackopens"]) == (True, False)
    assert result.ctx.features["listunsubscribe"] is True


def test_a_locked_switch_beats_the_filter():
    cred = Credential(name="shop", features={"trackopens": True}, locked=frozenset({"trackopens"}))
    result = run(smtpapi({"filters": {"opentrack": {"settings": {"enable": 0}}}}), credential=cred)
    assert result.verdict is None and result.ctx.features["trackopens"] is True


def test_send_at_defers_delivery_and_survives_the_spool_record():
    result = run(smtpapi({"send_at": 1924992000}))
    assert result.ctx.not_before == 1924992000.0
    assert result.ctx.to_record()["not_before"] == 1924992000.0


def test_unique_and_custom_args_merge_into_metadata():
    result = run(smtpapi({"unique_args": {"a": "1"}, "custom_args": {"b": 2}}))
    assert result.ctx.metadata == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{not json", "550 5.6.0 Invalid X-SMTPAPI header: not JSON (Expecting property name enclosed in double quotes at character 1)"),
        ("[1, 2]", "550 5.6.0 Invalid X-SMTPAPI header: expected a JSON object"),
        ({"to": "a@example.org"}, "550 5.6.0 Invalid X-SMTPAPI header: to must be a non-empty list of addresses"),
        ({"to": ["not an address"]}, "550 5.6.0 Invalid X-SMTPAPI header: to[0] is not an address"),
        ({"to": ["a@example.org", "b@example.org"], "sub": {"-n-": ["A"]}},
         "550 5.6.0 Invalid X-SMTPAPI header: sub '-n-' needs one value per to address"),
        ({"sub": {"-n-": ["A"]}}, "550 5.6.0 Invalid X-SMTPAPI header: sub needs a to list"),
        ({"category": 5}, "550 5.6.0 Invalid X-SMTPAPI header: category must be a string or a list of strings"),
        ({"unique_args": ["x"]}, "550 5.6.0 Invalid X-SMTPAPI header: unique_args must be an object of strings"),
        ({"filters": {"opentrack": {"settings": {"enable": "maybe"}}}},
         "550 5.6.0 Invalid X-SMTPAPI header: filters.opentrack.settings.enable must be 0 or 1"),
        ({"filters": {"bypass_list_management": {"settings": {"enable": 1}}}},
         "550 5.6.0 Invalid X-SMTPAPI header: bypass_list_management is not supported: the stoplist always applies"),
        ({"filters": {"footer": {"settings": {"enable": 1}}}}, "550 5.6.0 Invalid X-SMTPAPI header: unsupported filter 'footer'"),
        ({"send_at": "tomorrow"}, "550 5.6.0 Invalid X-SMTPAPI header: send_at must be a Unix timestamp"),
        ({"send_each_at": [1, 2]}, "550 5.6.0 Invalid X-SMTPAPI header: unsupported key 'send_each_at'"),
        ({"unique_args": {"k": "x" * 10_001}}, "550 5.6.0 Invalid X-SMTPAPI header: metadata is 10009 bytes, at most 10000"),
    ],
)
def test_malformed_values_are_refused_naming_the_header(value: Any, expected: str):
    assert reply(smtpapi(value)) == expected


def test_two_headers_are_refused():
    raw = complete_message(extra='X-SMTPAPI: {}\r\nX-SMTPAPI: {"category": "a"}\r\n')
    assert reply(raw) == "550 5.6.0 Message has 2 X-SMTPAPI: headers"


def test_the_recipient_limit_of_the_credential_applies_to_the_to_list():
    cred = Credential(name="small", max_recipients=2)
    api = {"to": ["a@example.org", "b@example.org", "c@example.org"]}
    assert reply(smtpapi(api), credential=cred) == "550 5.5.3 Too many recipients in X-SMTPAPI to: 3, at most 2"


def test_switched_off_the_header_is_still_stripped_and_nothing_applies():
    cred = Credential(name="plain", features={"sendgrid": False})
    result = run(smtpapi({"to": ["a@example.org"], "category": "x"}), rcpts=["r@example.com"], credential=cred)
    assert result.verdict is None and result.ctx.tags == [] and result.ctx.message.rcpt_tos == ["r@example.com"]
    assert b"X-SMTPAPI" not in result.copies[0].data


def test_stripping_applies_with_the_plugin_not_in_the_chain():
    result = run_chain(smtpapi({"to": ["a@example.org"]}), ["campaign_tag"], rcpt_tos=["r@example.com"])
    assert result.verdict is None and b"X-SMTPAPI" not in result.copies[0].data


def test_a_stoplisted_address_in_the_to_list_is_dropped(tmp_path):
    from pipeline.chain.driver import make_config
    from pipeline.events import open_event_store, open_suppression_list

    cfg = make_config({"gateway": {"data_dir": str(tmp_path)}}, CHAIN)
    store = open_event_store(cfg)
    store.suppress("b@example.org")
    store.close()
    stoplist = {"open_suppression": lambda: open_suppression_list(tmp_path)}  # the driver's default is empty
    result = run_chain(smtpapi({"to": ["a@example.org", "b@example.org"]}), config=cfg, rcpt_tos=["r@example.com"],
                       **stoplist)
    assert result.verdict is None and [c.recipient for c in result.copies] == ["a@example.org"]
    only = run_chain(smtpapi({"to": ["b@example.org"]}), config=cfg, rcpt_tos=["r@example.com"], **stoplist)
    assert only.verdict is not None and only.verdict.reply() == "550 5.0.0 Email is in the account stoplist"


async def test_over_smtp_the_spool_holds_the_expanded_envelope_metadata_and_send_time(data_dir):
    cfg = ingress_test_config(
        data_dir, chain=["campaign_tag", "sendgrid_smtpapi"],
        credentials=[{"name": "office", "kind": "ip", "networks": ["127.0.0.1/32"]}],
    )
    raw = (SAMPLES / "19-sendgrid-smtpapi.eml").read_bytes().replace(b'"filters"', b'"send_at": 1924992000, "filters"')
    async with running_ingress(cfg) as (_, ingress):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("plain"), timeout=10)
        await client.connect()
        await client.sendmail("shop@example.com", ["list@example.com"], raw)
        await client.quit()
    [msg] = spooled(data_dir)
    assert msg["recipients"] == ["ann.lee@example.org", "bob.stone@example.net"]
    assert msg["context"]["tags"] == ["welcome", "onboarding"]
    assert msg["context"]["metadata"] == {"user_id": "1001", "source": "signup"}
    assert msg["context"]["not_before"] == 1924992000.0
    assert b"X-SMTPAPI" not in msg["data"]
    conn = sqlite3.connect(str(data_dir / "spool.db"))
    try:
        due = {r for (r,) in conn.execute("SELECT next_attempt FROM recipients")}
    finally:
        conn.close()
    assert due == {1924992000.0}  # not due before send_at
    shown = CliRunner().invoke(main, ["queue", "show", msg["queue_id"]])
    assert shown.exit_code == 0, shown.output
    assert "Tags:       welcome, onboarding" in shown.output
    assert 'Metadata:   {"user_id": "1001", "source": "signup"}' in shown.output
    local = datetime.datetime.fromtimestamp(1924992000).strftime("%a %b %d %H:%M:%S")  # queue show's clock
    assert f"Send at:    {local}" in shown.output and f"queued, 0 attempt(s), next {local}" in shown.output


def test_replay_reports_the_recorded_metadata(data_dir, monkeypatch):
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["replay", str(SAMPLES / "19-sendgrid-smtpapi.eml")])
    assert result.exit_code == 0, result.output
    assert '  tags welcome,onboarding; metadata {"user_id": "1001", "source": "signup"}\n' in result.output
    assert result.output.count(": ready, ") == 2
