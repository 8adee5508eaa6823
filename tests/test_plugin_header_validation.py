"""header_validation: every reply checked word for word, additions checked on the delivered bytes."""

from __future__ import annotations

import email.header
import email.utils
import re
from typing import Any

import aiosmtplib
import pytest

from pipeline.app.harness import ingress_test_config, running_ingress, spooled
from pipeline.chain.driver import run_chain
from pipeline.config import ConfigError
from pipeline.contract.message import Message
from tests.support import SAMPLES, complete_message, corpus_files, sample_files

COMPLETE = complete_message()


def without(raw: bytes, *names: str) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [
        ln
        for ln in head.split(b"\r\n")
        if ln.split(b":", 1)[0].decode().lower() not in {n.lower() for n in names}
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def with_header(raw: bytes, line: bytes) -> bytes:
    return line + b"\r\n" + raw


def check(raw: bytes, config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    cfg: dict[str, Any] = {"gateway": {"hostname": "gw.example.net"}}
    if config is not None:
        cfg["plugins"] = {"header_validation": config}
    return run_chain(raw, ["header_validation"], config=cfg, **kwargs)


def reply(raw: bytes, config: dict[str, Any] | None = None, **kwargs: Any) -> str | None:
    result = check(raw, config, **kwargs)
    return result.verdict.reply() if result.verdict is not None else None


# -- golden inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sample_files() + corpus_files(), ids=lambda p: p.name)
def test_golden_messages_pass_or_get_the_documented_reply(path):
    expected = {
        "10-missing-headers.eml": "550 5.6.0 Message has no From: header",
        "17-two-from-headers.eml": "550 5.6.0 Message has 2 From: headers",
    }
    result = check(path.read_bytes())
    got = result.verdict.reply() if result.verdict is not None else None
    assert got == expected.get(path.name)
    edits = [(e.action, e.target) for e in result.ctx.message.edits if e.plugin == "header_validation"]
    if path.name == "24-enkod-literal.eml":  # enKod's literal example, as documented, has no Message-ID
        assert edits == [("add_header", "Message-Id")]
    elif got is None:  # complete messages are left as they were
        assert edits == []


def test_sample_without_from_is_rejected_naming_from():
    assert reply((SAMPLES / "10-missing-headers.eml").read_bytes()) == "550 5.6.0 Message has no From: header"


# -- required headers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["From", "To", "Subject", "MIME-Version", "Content-Type"])
def test_missing_required_header_is_rejected_naming_it_in_strict_mode(name):
    assert reply(without(COMPLETE, name), {"strict": True}) == f"550 5.6.0 Message has no {name}: header"


def test_on_defaults_only_a_header_without_a_safe_default_is_required():
    assert reply(without(COMPLETE, "Subject")) == "550 5.6.0 Message has no Subject: header"
    result = check(without(COMPLETE, "From", "To", "MIME-Version", "Content-Type"), mail_from="app@example.com")
    assert result.verdict is None
    out = Message(result.copies[0].data)
    assert (out.get("From"), out.get("To")) == ("app@example.com", "undisclosed-recipients:;")
    assert (out.get("MIME-Version"), out.get("Content-Type")) == ("1.0", "text/plain; charset=us-ascii")


def test_missing_message_id_and_date_are_added():
    result = check(without(COMPLETE, "Message-Id", "Date"))
    assert result.verdict is None
    out = Message(result.copies[0].data)
    mid = out.get("Message-Id")
    assert mid is not None
    assert re.fullmatch(rf"<{re.escape(result.ctx.queue_id)}\.[0-9a-f]{{8}}@gw\.example\.net>", mid)
    date = email.utils.parsedate_to_datetime(out.get("Date"))
    assert date.utcoffset() is not None and date.utcoffset().total_seconds() == 0
    assert abs(date.timestamp() - result.ctx.received_at) < 2
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000", out.get("Date"))
    assert [(e.plugin, e.action, e.target) for e in result.ctx.message.edits] == [
        ("header_validation", "add_header", "Message-Id"),
        ("header_validation", "add_header", "Date"),
    ]


def test_two_generated_message_ids_differ():
    ids = {Message(check(without(COMPLETE, "Message-Id")).copies[0].data).get("Message-Id") for _ in range(3)}
    assert len(ids) == 3


def test_missing_message_id_is_rejected_when_adding_is_off():
    raw = without(COMPLETE, "Message-Id", "Date")
    assert reply(raw, {"add_missing": []}) == "550 5.6.0 Message has no Message-Id: header"
    assert reply(raw, {"add_missing": ["Message-Id"]}) == "550 5.6.0 Message has no Date: header"


def test_required_list_is_configurable():
    raw = without(COMPLETE, "To", "MIME-Version")
    assert reply(raw, {"required": ["From", "Subject"], "strict": True}) is None
    assert (
        reply(raw, {"required": ["From", "Subject", "X-Mailer"]})
        == "550 5.6.0 Message has no X-Mailer: header"
    )
    assert reply(raw, {"strict": True}) == "550 5.6.0 Message has no To: header"


def test_smtpeter_example_without_content_type_gets_the_rfc2045_default():
    raw = (
        b"From: <info@example.com>\r\nTo: <john@doe.com>\r\nSubject: Example email\r\nMIME-Version: 1.0\r\n"
        b"\r\nThis is example content\r\n"
    )
    assert reply(raw, {"strict": True}) == "550 5.6.0 Message has no Content-Type: header"
    result = check(raw)  # on defaults
    assert result.verdict is None
    out = result.copies[0].data
    assert b"\r\nContent-Type: text/plain; charset=us-ascii\r\n" in out
    assert out.endswith(b"\r\n\r\nThis is example content\r\n")


def test_perfit_subject_only_example_is_completed_from_the_envelope():
    raw = b"Subject: este es el asunto\r\n\r\nEste es el contenido\r\n"
    assert reply(raw, {"strict": True}) == "550 5.6.0 Message has no From: header"
    result = check(raw, mail_from="remitente@example.com", rcpt_tos=["a@example.org"])  # on defaults
    assert result.verdict is None
    out = Message(result.copies[0].data)
    assert out.get("From") == "remitente@example.com"
    assert out.get("To") == "undisclosed-recipients:;"
    assert out.get("MIME-Version") == "1.0"
    assert out.get("Content-Type") == "text/plain; charset=us-ascii"
    assert out.get("Subject") == "este es el asunto"


def test_from_cannot_be_added_for_the_null_sender():
    raw = without(COMPLETE, "From")
    config = {"add_missing": ["Message-Id", "Date", "From"]}
    assert (
        reply(raw, config, mail_from="", rcpt_tos=["a@example.org"])
        == "550 5.6.0 Message has no From: header"
    )


# -- singletons ------------------------------------------------------------------------------


def test_two_subject_headers_are_rejected():
    assert reply(with_header(COMPLETE, b"Subject: again")) == "550 5.6.0 Message has 2 Subject: headers"


def test_three_from_headers_are_counted():
    raw = with_header(with_header(COMPLETE, b"From: a@example.com"), b"FROM: b@example.com")
    assert reply(raw) == "550 5.6.0 Message has 3 From: headers"


def test_unique_list_is_configurable():
    raw = with_header(COMPLETE, b"To: second@example.org")
    assert reply(raw) == "550 5.6.0 Message has 2 To: headers"
    assert reply(raw, {"unique": ["From", "Subject"]}) is None


# -- From ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b"sender", "Invalid From: header: the address has no domain"),
        (b"Bob <bob@>", "Invalid From: header: the address has no domain"),
        (b"undisclosed-recipients:;", "Invalid From: header: no valid email address"),
        (b"<@>", "Invalid From: header: no valid email address"),
        (b"a@b@example.com", "Invalid From: header: no valid email address"),
        (b"bob@ex ample.com", "Invalid From: header: no valid email address"),
        # values on which Python's own address parser crashes (IndexError, AttributeError, ...)
        (b"<", "Invalid From: header: no valid email address"),
        (b".:", "Invalid From: header: no valid email address"),
        (b"c <?@[ ", "Invalid From: header: no valid email address"),
        (b"a@example.com, c@example.com", "Invalid From: header: 2 addresses, exactly one allowed"),
        (b"Bob <bob@localhost>", "Invalid From: header: the domain is not a valid host name"),
        (b"bob@[127.0.0.1]", "Invalid From: header: the domain is not a valid host name"),
        (b"bob@-bad-.example.com", "Invalid From: header: the domain is not a valid host name"),
    ],
)
def test_invalid_from_is_rejected(value, text):
    raw = without(COMPLETE, "From").replace(b"To:", b"From: " + value + b"\r\nTo:", 1)
    assert reply(raw) == f"550 5.6.0 {text}"


@pytest.mark.parametrize(
    "value",
    [
        b"plain@example.com",
        b'"Doe, Jane" <jane@mail.example.co.uk>',
        b"=?utf-8?q?Smith=2C_John?= <john@example.com>",  # decodes to a comma: parsed raw, so one address
        b"John Q. Public <jqp@xn--80ak6aa92e.com>",
    ],
)
def test_valid_from_is_accepted(value):
    raw = without(COMPLETE, "From").replace(b"To:", b"From: " + value + b"\r\nTo:", 1)
    assert reply(raw) is None


# -- 8-bit headers ---------------------------------------------------------------------------


def _header_text(data: bytes, name: str) -> str:
    value = Message(data).headers
    raw = next(h for h in value if h.name == name)
    return str(email.header.make_header(email.header.decode_header(raw.raw_value)))


def test_utf8_subject_is_rfc2047_encoded():
    raw = without(COMPLETE, "Subject").replace(b"\r\n\r\n", "\r\nSubject: Привет, мир 兼\r\n\r\n".encode(), 1)
    result = check(raw)
    assert result.verdict is None
    out = result.copies[0].data
    head = out.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"Subject: =?utf-8?" in head
    assert _header_text(out, "Subject") == "Привет, мир 兼"
    assert [(e.plugin, e.action, e.target) for e in result.ctx.message.edits] == [
        ("header_validation", "change_header", "Subject")
    ]


def test_non_utf8_subject_falls_back_to_latin1_or_the_configured_charset():
    raw = COMPLETE.replace(b"Subject: hello", b"Subject: Caf\xe9 cr\xe8me")
    assert _header_text(check(raw).copies[0].data, "Subject") == "Café crème"
    cyr = COMPLETE.replace(b"Subject: hello", "Subject: Скидки".encode("cp1251"))
    out = check(cyr, {"eight_bit_fallback_charset": "windows-1251"}).copies[0].data
    assert _header_text(out, "Subject") == "Скидки"


def test_8bit_display_name_is_encoded_and_the_address_kept():
    raw = COMPLETE.replace(
        b"From: Sender <sender@example.com>", "From: Иван Петров <ivan@example.com>".encode()
    )
    result = check(raw)
    assert result.verdict is None
    out = Message(result.copies[0].data)
    head = result.copies[0].data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert out.addresses("From") == [("Иван Петров", "ivan@example.com")]


def test_8bit_headers_rejected_when_configured():
    raw = COMPLETE.replace(b"Subject: hello", "Subject: Привет".encode())
    assert reply(raw, {"eight_bit_headers": "reject"}) == (
        "550 5.6.0 Raw 8-bit bytes in Subject: header; use RFC 2047 encoding"
    )


def test_8bit_structured_header_is_rejected_even_when_encoding():
    raw = COMPLETE.replace(b"Message-Id: <m1@example.com>", "Message-Id: <é@example.com>".encode())
    assert reply(raw) == "550 5.6.0 Raw 8-bit bytes in Message-Id: header (a structured field must be ASCII)"


def test_non_ascii_address_is_rejected_with_5_6_7():
    raw = COMPLETE.replace(b"To: rcpt@example.org", "To: пользователь@example.org".encode())
    assert reply(raw) == "550 5.6.7 Non-ASCII address in To: header (SMTPUTF8 is not supported)"


# -- limits and shape ------------------------------------------------------------------------


def test_too_many_header_fields_are_refused_with_552():
    raw = COMPLETE
    for i in range(4):
        raw = with_header(raw, f"X-Extra-{i}: {i}".encode())
    assert reply(raw, {"max_headers": 10}) == "552 5.3.4 Message has too many header fields (11, limit 10)"
    assert reply(raw, {"max_headers": 11}) is None


def test_overlong_header_line_is_rejected():
    raw = COMPLETE.replace(b"Subject: hello", b"Subject: " + b"x" * 1000)
    assert reply(raw) == "550 5.6.0 Header line too long in Subject: (1009 octets, limit 998)"


def test_folded_long_header_is_measured_per_line():
    raw = COMPLETE.replace(b"Subject: hello", b"Subject: " + b"x" * 500 + b"\r\n " + b"y" * 500)
    assert reply(raw) is None
    assert (
        reply(raw, {"max_header_line": 400})
        == "550 5.6.0 Header line too long in Subject: (509 octets, limit 400)"
    )


@pytest.mark.parametrize("line", [b"Subject : spaced", b"X-Tab\t: x"])
def test_malformed_header_field_is_rejected(line):
    raw = COMPLETE.replace(b"MIME-Version: 1.0", line + b"\r\nMIME-Version: 1.0")
    assert reply(raw) == "550 5.6.0 Malformed header field number 6: expected Name: value"


@pytest.mark.parametrize("line", [b"no colon here", b"Bad Name: x", b"<html>"])
def test_a_line_that_is_no_header_field_starts_the_body_as_in_postfix_cleanup(line):
    """enKod's example has no empty line before its HTML: the body starts at the first line that
    is not a field, and the delivered message has the empty line."""
    raw = COMPLETE.replace(b"MIME-Version: 1.0", line + b"\r\nMIME-Version: 1.0")
    head, _, _ = raw.partition(line)
    result = check(raw)
    assert result.verdict is None
    out = result.copies[0].data
    assert b"\r\n\r\n" + line + b"\r\nMIME-Version: 1.0\r\n" in out
    assert out.startswith(head[:-2]) and "MIME-Version" in Message(out)  # added, the body's line kept


# -- switch and config -----------------------------------------------------------------------


def test_validate_switch_off_skips_the_plugin():
    raw = (SAMPLES / "10-missing-headers.eml").read_bytes()
    cfg = {"features": {"validate": False}}
    assert run_chain(raw, ["header_validation"], config=cfg).verdict is None


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (
            {"add_missing": ["Subject"]},
            "plugins.header_validation.add_missing: cannot generate a Subject header",
        ),
        ({"eight_bit_headers": "drop"}, "plugins.header_validation.eight_bit_headers"),
        ({"eight_bit_fallback_charset": "klingon"}, "unknown charset 'klingon'"),
        ({"max_header_line": 5000}, "plugins.header_validation.max_header_line"),
        ({"required": ["Bad Name"]}, "'Bad Name' is not a header name"),
        ({"requierd": ["From"]}, "plugins.header_validation.requierd: unknown key"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(config, fragment):
    with pytest.raises(ConfigError) as err:
        check(COMPLETE, config)
    assert fragment in str(err.value)
    assert str(err.value).startswith("<test>: ")


# -- over a real SMTP session ----------------------------------------------------------------


async def _send(data_dir, raw: bytes, config: dict[str, Any] | None = None) -> tuple[int, str]:
    """Send ``raw`` with aiosmtplib to a real ingress (IP allow-listed); (code, text) of the DATA reply."""
    cfg = ingress_test_config(
        data_dir,
        chain=["header_validation"],
        credentials=[{"name": "office", "kind": "ip", "networks": ["127.0.0.1/32"]}],
        plugins={"header_validation": config or {}},
    )
    async with running_ingress(cfg) as (_, ingress):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ingress.port("plain"), timeout=10)
        await client.connect()
        try:
            _, response = await client.sendmail("app@example.com", ["rcpt@example.org"], raw)
            return 250, response
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
        finally:
            await client.quit()


@pytest.mark.parametrize(
    ("name", "reply_text"),
    [
        ("10-missing-headers.eml", "5.6.0 Message has no From: header"),
        ("17-two-from-headers.eml", "5.6.0 Message has 2 From: headers"),
    ],
)
async def test_refusal_is_the_reply_to_data_and_nothing_is_queued(data_dir, name, reply_text):
    code, text = await _send(data_dir, (SAMPLES / name).read_bytes(), {"strict": True})
    assert (code, text) == (550, reply_text)
    assert spooled(data_dir) == []


async def test_on_defaults_a_message_without_from_gets_the_authenticated_envelope_sender(data_dir):
    code, text = await _send(data_dir, (SAMPLES / "10-missing-headers.eml").read_bytes())
    assert code == 250, text
    [msg] = spooled(data_dir)
    assert Message(msg["data"]).get("From") == "app@example.com"


async def test_added_headers_and_encoded_subject_are_in_the_spooled_message(data_dir):
    raw = without(COMPLETE, "Message-Id", "Date").replace(b"Subject: hello", "Subject: Привет".encode())
    code, text = await _send(data_dir, raw)
    assert code == 250, text
    [msg] = spooled(data_dir)
    stored = Message(msg["data"])
    assert re.fullmatch(rf"<{msg['queue_id']}\.[0-9a-f]{{8}}@gw\.test>", stored.get("Message-Id"))
    assert stored.get("Date") and stored.get("Subject") == "Привет"
    assert msg["data"].split(b"\r\n\r\n", 1)[0].isascii()


@pytest.mark.parametrize("value", [b"<", b"c <?@[ ", b".:"])
def test_unparsable_8bit_address_header_is_a_550_not_a_plugin_failure(value):
    raw = COMPLETE.replace(b"To: rcpt@example.org", b"To: " + value + "é".encode())
    assert reply(raw) == "550 5.6.0 Invalid To: header: cannot parse the address list"


# -- header_validation ------------------------------------------------------------------------


FROM_VALUES = [
    "Jane <jane@example.com>",
    "jane@example.com",
    '"Doe, Jane" <jane@example.com>',
    "=?utf-8?q?J=C3=A4ne?= <jane@example.com>",
    "a@example.com, b@example.com",
    "Jane <jane@>",
    "jane",
    "<@example.com>",
    "Jane <jane@exa_mple.com>",
    "",
    "undisclosed-recipients:;",
    "Jane <jane@example.com",
    "x" * 3000 + " <jane@example.com>",  # above the cache's length bound: checked uncached
]


def test_cached_from_check_gives_the_uncached_verdict_every_time() -> None:
    from plugins.header_validation import _check_from, check_from

    for _ in range(2):  # the second round answers from the cache
        for value in FROM_VALUES:
            assert check_from(value) == _check_from(value), value
    assert check_from("jane") is not None and check_from("Jane <jane@example.com>") is None


def test_long_from_values_are_not_kept_in_the_cache() -> None:
    from plugins.header_validation import _CHECK_FROM_CACHE_MAX_LEN, _check_from_cached, check_from

    long_value = "y" * (_CHECK_FROM_CACHE_MAX_LEN + 1) + " <jane@example.com>"
    before = _check_from_cached.cache_info()
    assert check_from(long_value) is None
    after = _check_from_cached.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)
