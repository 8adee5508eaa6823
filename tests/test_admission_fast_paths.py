"""The admission fast paths give exactly what the straightforward code gave.

Header look-ups by the cached lower-case name, ``raw_value`` without a regex for unfolded
fields, the dialects' per-message field index, header_validation's one-pass checks, the
synchronous no-op of suppression and the gateway metrics' cached counters are each compared
with the code as it was (tests/support/admission_reference.py): on generated header blocks
(folded, unfolded, odd whitespace, non-ASCII, RFC 2047, duplicate fields, bare LF/CR) and on
every message in samples/ and the shared corpus. The whole admission step (verdicts, SMTP
replies, the context it fills, the bytes handed on) is compared with the same chain running
the reference code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from typing import Any

import pytest

from pipeline.chain import admission
from pipeline.chain.driver import make_chain, make_config
from pipeline.chain.limits import check_limits
from pipeline.config.sections import DEFAULT_ADMISSION_PLUGINS
from pipeline.contract import mime
from pipeline.contract.context import MessageContext
from pipeline.contract.headers import Header, normalize_newlines
from pipeline.contract.message import Message, MessageError
from pipeline.toolkit import dialects
from plugins import campaign_tag, header_validation
from tests.support import admission_reference as ref
from tests.support import corpus_files, sample_files

ADMISSION = list(DEFAULT_ADMISSION_PLUGINS)

NAMES = [
    "From", "FROM", "from", "To", "Cc", "Subject", "Date", "Message-Id", "MESSAGE-ID", "MIME-Version",
    "Content-Type", "content-type", "Content-Transfer-Encoding", "Content-Disposition", "Reply-To",
    "X-Campaign-Id", "X-Letter-Id", "X-SMTPAPI", "X-Mailgun-Tag", "x-mailgun-tag", "X-Mailgun-Track",
    "X-Mailgun-Track-Clicks", "X-Mailgun-Variables", "X-Mailgun-Deliver-By", "X-Mailgun-Require-TLS",
    "X-PM-Tag", "X-PM-Metadata-order", "X-PM-TrackOpens", "X-PM-TrackLinks", "X-PM-Message-Stream",
    "X-SES-CONFIGURATION-SET", "X-SES-MESSAGE-TAGS", "x-mq-tag", "X-MQ-Order-Id", "x-mq-inlinecss",
    "X-Smtpeter-TrackClicks", "X-Other", "Received",
]  # fmt: skip

VALUES = [
    b"plain",
    b"abc-123_X",
    b"",
    b"  \t spaced \t ",
    b"folded\r\n continued",
    b"folded\r\n\ttab continued\r\n  and again",
    b"trailing \r\n ",
    b"Zo\xc3\xab <zoe@example.com>",
    b"caf\xe9 latin-1",
    b"=?utf-8?q?Zo=C3=AB?= <zoe@example.com>",
    b"=?iso-8859-1?b?Y2Fm6Q==?=",
    b"=?bad?x?broken?=",
    b"Shop <app@example.com>",
    b"a@example.com, b@example.com",
    b"yes",
    b"true",
    b'{"category": ["news", "weekly"], "unique_args": {"k": "v"}}',
    b'{"to": ["x@example.org", "Y <y@example.org>"], "sub": {"-n-": ["1", "2"]}}',
    b'{"k": 1}',
    b"name1=value1, name2=value.2@x",
    b"config-1",
    b"HtmlOnly",
    b"Thu, 03 Dec 2026 10:00:00 +0000",
    b"<m1@example.com>",
    b"text/html; charset=utf-8",
    b'multipart/alternative; boundary="b1"',
    b"quoted-printable",
    b"attachment; filename=x.pdf",
    b"bare\nLF inside",
    b"bare\rCR inside",
    b"bare\n continuation by LF",
    b"x" * 1200,
    b"long " * 250,
]


def generated_messages(n: int = 400, seed: int = 17) -> list[bytes]:
    """Header blocks of 0-14 fields drawn from NAMES x VALUES (duplicates, case variants, odd
    values), then a body."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        lines = []
        for _ in range(rnd.randrange(0, 15)):
            name = rnd.choice(NAMES).encode()
            sep = rnd.choice([b": ", b":", b":  ", b" : "])
            lines.append(name + sep + rnd.choice(VALUES))
        body = rnd.choice([b"hello\r\n", b"<html><a href='https://x.example/'>x</a></html>\r\n", b""])
        out.append(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    return out


def every_message() -> list[bytes]:
    files = [p.read_bytes() for p in sample_files() + corpus_files()]
    return files + generated_messages()


def parsed(raws: list[bytes]) -> list[Message]:
    out = []
    for raw in raws:
        try:
            out.append(Message(raw, "app@example.com", ["user@example.org"]))
        except MessageError:
            continue
    return out


MESSAGES = every_message()


def test_field_look_ups_equal_the_scans_with_lower_case_names() -> None:
    checked = 0
    for msg in parsed(MESSAGES):
        for part in msg.walk():
            for h in part.headers:
                assert h.lname == h.name.lower()
                assert h.raw_value == ref.raw_value(h)
            for name in {*NAMES, *(h.name for h in part.headers), "Missing"}:
                assert part.get_header(name) == ref.header_value(part.headers, name)
            assert mime._mime_fields(part.headers) == tuple(
                ref.header_value(part.headers, n)
                for n in ("Content-Type", "Content-Disposition", "Content-Transfer-Encoding")
            )
            checked += 1
    assert checked > 400


def test_raw_value_of_folded_unfolded_and_odd_fields_equals_the_regex() -> None:
    for value in VALUES + [b"a\r\n", b"\r\n b", b"a\r\n\r\n b", b"\xff\xfe\r\n \xe9", b" : x"]:
        for name in (b"X", b"Subject", b"No-Colon"):
            header = Header(name.decode(), name + b":" + value)
            assert header.raw_value == ref.raw_value(header)
        no_colon = Header("", value)
        assert no_colon.raw_value == ref.raw_value(no_colon)


def _three_scans(headers: list[Header]) -> tuple[str | None, ...]:
    return tuple(
        ref.header_value(headers, n)
        for n in ("Content-Type", "Content-Disposition", "Content-Transfer-Encoding")
    )


def _entities(msg: Message) -> list[tuple[Any, ...]]:
    return [
        (e.depth, e.body_start, e.body_size, e.content_type, e.is_attachment, e.cte, e.is_multipart, e.intact)
        for e in msg.structure().walk()
    ]


def test_limits_and_structure_equal_the_three_scans_per_entity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The structure scan reads each entity's Content-* fields in one pass: the same entities,
    so the same limits verdicts, as with three look-ups."""
    limits = make_config({"limits": {"max_links": 20, "max_html_parts": 1, "max_mime_parts": 3}}, []).limits
    default = make_config({}, []).limits
    got = []
    for msg in parsed(MESSAGES):
        got.append((_entities(msg), check_limits(msg, limits), check_limits(msg, default)))
    monkeypatch.setattr(mime, "_mime_fields", _three_scans)
    want = []
    for msg in parsed(MESSAGES):
        want.append((_entities(msg), check_limits(msg, limits), check_limits(msg, default)))
    assert got == want
    assert any(v is not None for _, v, _ in got) and any(v is None for _, v, _ in got)


def _ctx(msg: Message) -> MessageContext:
    return MessageContext(message=msg, queue_id="Q1", credential=None, features={}, session=None)


def test_dialect_look_ups_equal_the_scans_before_and_after_edits() -> None:
    """The per-message field index is rebuilt after every edit of the header block."""
    probe = ["X-Mailgun-Tag", "x-smtpapi", "X-PM-Tag", "From", "Subject", "X-New", "Missing"]
    for msg in parsed(MESSAGES):
        ctx = _ctx(msg)
        edits = [
            lambda m: None,
            lambda m: m.add_header("X-New", "one"),
            lambda m: m.add_header("x-mailgun-tag", "added"),
            lambda m: m.change_header("Subject", "changed"),
            lambda m: m.remove_header("X-Mailgun-Tag"),
            lambda m: m.insert_raw_header(b"X-PM-Tag: raw\r\n folded"),
            lambda m: m.remove_header("x-new"),
        ]
        for edit in edits:
            edit(msg)
            for name in probe:
                assert dialects.single(ctx, name) == ref.single(ctx, name)
                assert dialects.every(ctx, name) == ref.every(ctx, name)
            for prefix in ("X-PM-Metadata-", "x-mq-", "X-", "Nothing-"):
                assert dialects.with_prefix(ctx, prefix) == ref.with_prefix(ctx, prefix)
            for name in ("X-Campaign-Id", "X-Letter-Id"):
                assert campaign_tag.read_id(ctx, name) == ref.read_id(ctx, name)


def test_the_field_index_is_per_message() -> None:
    a = Message(b"X-Mailgun-Tag: a\r\n\r\nbody\r\n")
    b = Message(b"X-Mailgun-Tag: b\r\nX-Mailgun-Tag: c\r\n\r\nbody\r\n")
    assert dialects.every(_ctx(a), "X-Mailgun-Tag") == ["a"]
    assert dialects.every(_ctx(b), "X-Mailgun-Tag") == ["b", "c"]
    assert dialects.every(_ctx(a), "X-Mailgun-Tag") == ["a"]
    copy = b.copy()
    copy.remove_header("X-Mailgun-Tag")
    assert dialects.every(_ctx(copy), "X-Mailgun-Tag") == []
    assert dialects.every(_ctx(b), "X-Mailgun-Tag") == ["b", "c"]


CONFIGS: list[dict[str, Any]] = [
    {},
    {"strict": True},
    {"eight_bit_headers": "reject"},
    {"required": ["From", "from", "X-Campaign-Id"], "add_missing": ["Date", "date", "Message-Id"]},
    {"required": [], "add_missing": ["From", "To"], "unique": ["X-Mailgun-Tag", "x-mailgun-tag"]},
    {"max_headers": 5, "max_header_line": 78},
]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_header_validation_gives_the_verdicts_and_bytes_of_the_three_pass_check(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(header_validation.secrets, "token_hex", lambda n: "ab" * n)
    chain = make_chain(make_config({"plugins": {"header_validation": config}}, ["header_validation"]))
    plugin = next(p.instance for p in chain.plugins.order("on_message") if p.name == "header_validation")
    for raw in MESSAGES:
        for sender in ("app@example.com", ""):
            try:
                new, old = (Message(raw, sender, ["user@example.org"]) for _ in range(2))
            except MessageError:
                break
            got = plugin.on_message(ctx=_ctx(new))
            want = ref.header_validation(plugin, _ctx(old))
            assert got == want, raw[:200]
            assert new.as_bytes() == old.as_bytes()
            assert [(e.action, e.target, e.detail) for e in new.edits] == [
                (e.action, e.target, e.detail) for e in old.edits
            ]


def _admit(chain: Any, raw: bytes) -> tuple[Any, ...]:
    verdict, ctx = asyncio.run(
        admission.admit_message(chain, raw, "app@example.com", ["user@example.org"], queue_id="Q0000000001")
    )
    if ctx is None:
        return (verdict,)
    return (
        verdict,
        ctx.message.as_bytes(),
        ctx.message.rcpt_tos,
        ctx.message.mail_from,
        [(e.plugin, e.action, e.target, e.detail) for e in ctx.message.edits],
        ctx.campaign_id,
        ctx.letter_id,
        ctx.tags,
        ctx.metadata,
        ctx.features,
        ctx.notes,
        ctx.not_before,
        ctx.deliver_by,
        ctx.require_tls,
    )


def test_the_admission_step_equals_the_chain_running_the_reference_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every admission plugin of the default chain, on every message: the same verdict (so the
    same SMTP reply), context and bytes as with each fast path swapped for the code as it was."""
    monkeypatch.setattr(header_validation.secrets, "token_hex", lambda n: "ab" * n)
    fixed = functools.partial(MessageContext, received_at=1_796_000_000.0)
    monkeypatch.setattr(admission, "MessageContext", fixed)
    chain = make_chain(make_config({}, ADMISSION))
    vendor = [
        b"X-SMTPAPI: " + VALUES[17] + b"\r\n",
        b'X-Mailgun-Tag: a\r\nX-Mailgun-Tag: b\r\nX-Mailgun-Track: yes\r\nX-Mailgun-Variables: {"k": 1}\r\n',
        b"X-PM-Tag: t\r\nX-PM-Metadata-order: 7\r\nX-PM-TrackLinks: HtmlOnly\r\n",
        b"X-SES-MESSAGE-TAGS: n=v, m=w\r\nX-SES-CONFIGURATION-SET: c1\r\n",
        b"x-mq-tag: q\r\nX-MQ-Order-Id: 9\r\nX-Campaign-Id: camp_1\r\nX-Letter-Id: L-2\r\n",
    ]
    inputs = MESSAGES + [v + raw for v in vendor for raw in MESSAGES[:40]]
    new = [_admit(chain, raw) for raw in inputs]

    monkeypatch.setattr(Header, "raw_value", property(ref.raw_value))
    monkeypatch.setattr(mime, "_header_value", ref.header_value)
    monkeypatch.setattr(dialects, "single", ref.single)
    monkeypatch.setattr(dialects, "every", ref.every)
    monkeypatch.setattr(dialects, "with_prefix", ref.with_prefix)
    monkeypatch.setattr(campaign_tag, "read_id", ref.read_id)
    monkeypatch.setattr(campaign_tag, "daily_campaign", ref.daily_campaign)
    monkeypatch.setattr(dialects, "has_prefix", lambda ctx, prefix: True)  # every dialect reads every field
    reference = make_chain(make_config({}, ADMISSION))
    calls = reference._calls["on_message"]
    for i, call in enumerate(calls):
        if call.plugin == "header_validation":
            calls[i] = dataclasses.replace(
                call, func=functools.partial(ref.header_validation, call.func.__self__)
            )
        if call.plugin == "suppression":
            calls[i] = dataclasses.replace(call, func=_async_suppression(call.func.__self__))
    old = [_admit(reference, raw) for raw in inputs]
    assert len(new) == len(old) > 500
    for raw, got, want in zip(inputs, new, old, strict=True):
        assert got == want, raw[:300]
    verdicts = {str(v[0]) for v in new}
    assert len(verdicts) > 5  # refusals of several kinds were compared, not only acceptances


def _async_suppression(plugin: Any) -> Any:
    """suppression's on_message as it was: a coroutine for every message."""

    async def on_message(ctx: MessageContext) -> Any:
        added = [e.detail for e in ctx.message.edits if e.action == "add_rcpt"]
        if not added:
            return None
        return await plugin._check_added(ctx, added)

    return on_message


def test_suppression_is_synchronous_unless_a_recipient_was_added() -> None:
    chain = make_chain(make_config({}, ["suppression"]))
    plugin = next(p.instance for p in chain.plugins.order("on_message") if p.name == "suppression")
    msg = Message(b"From: a@example.com\r\n\r\nbody\r\n", "a@example.com", ["b@example.org"])
    assert plugin.on_message(_ctx(msg)) is None
    msg.add_recipient("c@example.org")
    pending = plugin.on_message(_ctx(msg))
    assert asyncio.iscoroutine(pending)
    assert asyncio.run(pending) is None


def test_metrics_counters_export_what_labels_on_every_increment_exported() -> None:
    """The cached child counters: the same exposition as prometheus_client's labels() per call."""
    from prometheus_client import CollectorRegistry, Counter

    from pipeline.tracking.metrics import COUNTERS, GatewayMetrics

    metrics = GatewayMetrics()
    registry = CollectorRegistry(auto_describe=True)
    plain: dict[str, Counter] = {}
    rnd = random.Random(3)
    keys = [
        "accept_total:queued",
        "accept_total:refused",
        "events_total:accepted",
        "http_requests_total:click|200",
        "http_requests_total:click|404",
        "event_store_errors_total",
        "not_declared_total:x",
    ]
    for _ in range(500):
        key = rnd.choice(keys)
        step = rnd.choice([0, 1, 1, 3])
        metrics[key] += step
        name, _, label = key.partition(":")
        if name not in plain:
            labels, text = COUNTERS.get(name, (("label",), f"{name} (counter)."))
            plain[name] = Counter(f"smtpgate_{name}", text, labels, registry=registry)
        (plain[name].labels(*label.split("|")) if label else plain[name]).inc(step)

    def counted(reg: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        return sorted(
            (sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for family in reg.collect()
            if family.type == "counter"
            for sample in family.samples
            if not sample.name.endswith("_created")
        )

    assert counted(metrics.registry) == counted(registry)
    assert len(counted(registry)) == len(keys)
    with pytest.raises(ValueError):
        metrics["accept_total:queued"] = 0  # a counter never goes down


def test_the_daily_campaign_equals_strftime_of_the_arrival_time() -> None:
    """Remembered per UTC day only for formats finer than nothing below a day; near midnight
    (and for any other format) formatted each time."""
    rnd = random.Random(5)
    formats = ["%Y-%m-%d", "%Y%m%d", "day_%j-%y", "%Y-%m-%d-%H", "%G-W%V-%u", "%Y%m%d%M%S%f", "%%Y-%d", "x"]
    days = [20_000 + rnd.randrange(2000) for _ in range(20)]
    times = [
        d * 86400 + o for d in days for o in (0.0, 0.0004, 0.0009999, 1.5, 3600.25, 86399.9991, 86399.9999996)
    ]
    times += [rnd.uniform(0, 2_000_000_000) for _ in range(2000)]
    for fmt in formats:
        for when in times + sorted(times) + [times[0]] * 3:
            assert campaign_tag.daily_campaign(fmt, when) == ref.daily_campaign(fmt, when), (fmt, when)


@pytest.mark.parametrize(
    "raw",
    [b"no colon", b"no colon\r\nX: y\r\n\r\nb", b" leading: space\r\n", b"\tx", b"X: y", b"X: y\r\n", b"\r\nbody",
     b"a\nb: c", b"a:\rb", b"   ", b"\r\n\r\n"],
)  # fmt: skip
def test_the_first_line_check_refuses_what_it_refused(raw: bytes) -> None:
    def reference(raw: bytes) -> str | None:
        raw = normalize_newlines(raw)
        if not raw or raw.isspace():
            return "empty message"
        first_line = raw.split(b"\r\n", 1)[0]
        if first_line and not first_line.startswith((b" ", b"\t")) and b":" not in first_line:
            return "not an RFC 5322 message: the first line is not a header field"
        return None

    try:
        Message(raw)
        got = None
    except MessageError as exc:
        got = str(exc)
    assert got == reference(raw)
