"""dkim_sign: signatures checked by stock dkimpy against public keys served by a test DNS function."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed

from pipeline import MessageContext, Plugin, hookimpl
from pipeline.app.gateway import Gateway
from pipeline.chain.admission import admit_message
from pipeline.chain.driver import make_chain, make_config, run_chain, run_chain_async
from pipeline.config import ConfigError
from pipeline.contract.message import Message
from plugins.dkim_sign import (
    DkimSign,
    dkim_signature,
    dns_txt_value,
    relaxed_body,
    signed_headers,
    signer,
    split_message,
)
from tests.support import SAMPLES, complete_message, corpus_files, sample_files
from tests.support.smtp_sink import EventRecorder, start_sink

FILES = sample_files() + corpus_files()  # every golden input: samples/ and the shared corpus

REJECTED = {
    "10-missing-headers.eml": "550 5.6.0 Message has no From: header",
    "14-invalid-campaign-id.eml": "550 5.6.0 Invalid X-Campaign-Id header: expected 1-64 characters from A-Z a-z 0-9 _ -",
    "17-two-from-headers.eml": "550 5.6.0 Message has 2 From: headers",
}
SIMPLE = complete_message(body="body line\r\n")


@dataclass
class Keys:
    dir: Path
    rsa_com: Path
    ed_com: Path
    rsa_net: Path
    records: dict[bytes, bytes]

    def dns(self, name: bytes, timeout: int = 5) -> bytes:
        return self.records.get(name, b"")


def _pem(key: Any) -> bytes:
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if isinstance(key, rsa.RSAPrivateKey)
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("dkim")
    rsa_com = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_net = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_com = ed25519.Ed25519PrivateKey.generate()
    for name, key in [("com.pem", rsa_com), ("com-ed.pem", ed_com), ("net.pem", rsa_net)]:
        (d / name).write_bytes(_pem(key))
    records = {
        b"s1._domainkey.example.com.": dns_txt_value(rsa_com).encode(),
        b"e1._domainkey.example.com.": dns_txt_value(ed_com).encode(),
        b"s2._domainkey.example.net.": dns_txt_value(rsa_net).encode(),
    }
    return Keys(d, d / "com.pem", d / "com-ed.pem", d / "net.pem", records)


def dkim_config(keys: Keys, **extra: Any) -> dict[str, Any]:
    return {
        "domains": {
            "example.com": {
                "selector": "s1",
                "key_file": str(keys.rsa_com),
                "ed25519_selector": "e1",
                "ed25519_key_file": str(keys.ed_com),
            },
            "example.net": {"selector": "s2", "key_file": str(keys.rsa_net)},
        },
        **extra,
    }


def sign(raw: bytes, keys: Keys, plugins: list[Any] | None = None, **extra: Any) -> Any:
    cfg = {"plugins": {"dkim_sign": dkim_config(keys, **extra)}}
    return run_chain(raw, plugins or ["dkim_sign"], config=cfg, rcpt_tos=["a@example.org", "b@example.org"])


def tags(data: bytes, idx: int = 0) -> dict[str, str]:
    sigs = [h for h in Message(data).headers if h.name.lower() == "dkim-signature"]
    value = re.sub(r"\s+", "", sigs[idx].raw_value)
    return dict(part.split("=", 1) for part in value.split(";") if part)


def verifies(data: bytes, keys: Keys, idx: int = 0) -> bool:
    """Signature number ``idx`` (0 = top) verifies; a body hash mismatch raises in dkimpy: False."""
    try:
        return bool(dkim.DKIM(data).verify(idx=idx, dnsfunc=keys.dns))
    except dkim.DKIMException:
        return False


# -- signatures ------------------------------------------------------------------------------


def test_rsa_and_ed25519_signatures_verify_with_stock_dkimpy(keys):
    result = sign((SAMPLES / "02-newsletter-alternative.eml").read_bytes(), keys)
    assert result.verdict is None and len(result.copies) == 2
    for copy in result.copies:
        assert dkim.verify(copy.data, dnsfunc=keys.dns)  # the top signature, as most verifiers do
        assert verifies(copy.data, keys, 0) and verifies(copy.data, keys, 1)
        rsa_tags, ed_tags = tags(copy.data, 0), tags(copy.data, 1)
        assert (rsa_tags["a"], rsa_tags["s"], rsa_tags["d"]) == ("rsa-sha256", "s1", "example.com")
        assert (ed_tags["a"], ed_tags["s"], ed_tags["d"]) == ("ed25519-sha256", "e1", "example.com")
        assert rsa_tags["c"] == ed_tags["c"] == "relaxed/relaxed"
        assert copy.data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")


def test_signed_header_list_oversigns_from_subject_to(keys):
    data = sign((SAMPLES / "02-newsletter-alternative.eml").read_bytes(), keys).copies[0].data
    assert tags(data)["h"] == (
        "from:to:subject:date:message-id:mime-version:content-type:"
        "list-unsubscribe:list-unsubscribe-post:from:subject:to"
    )


def test_campaign_and_letter_ids_are_signed_when_present(keys):
    data = sign((SAMPLES / "12-campaign-letter-ids.eml").read_bytes(), keys).copies[0].data
    signed = tags(data)["h"].split(":")
    assert "x-campaign-id" in signed and "x-letter-id" in signed
    assert "x-campaign-id" not in tags(sign(SIMPLE, keys).copies[0].data)["h"]


def test_signed_headers_counts_repeated_fields():
    include = signed_headers(["From", "To", "To", "Feedback-ID", "Received", "Subject"])
    assert include.count(b"to") == 3  # both fields plus the oversigned extra
    assert include.count(b"from") == 2 and include.count(b"subject") == 2
    assert include.count(b"feedback-id") == 1 and b"received" not in include
    assert include.count(b"date") == 1  # absent but signed: it cannot be added later


def test_signature_still_verifies_after_the_copy_is_written_to_disk_and_read_back(keys, tmp_path):
    result = sign((SAMPLES / "07-attachment-pdf.eml").read_bytes(), keys)
    path = tmp_path / "copy.eml"
    path.write_bytes(result.copies[0].data)
    data = path.read_bytes()
    assert verifies(data, keys, 0) and verifies(data, keys, 1)
    reparsed = Message.from_file(str(path))
    assert reparsed.as_bytes() == data
    assert verifies(reparsed.as_bytes(), keys)


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("body", lambda d: d.replace(b"body line", b"body linE")),
        ("subject", lambda d: d.replace(b"Subject: hello", b"Subject: hellO")),
        ("added From", lambda d: d.replace(b"Message-Id:", b"From: evil@example.net\r\nMessage-Id:", 1)),
        ("added To", lambda d: d.replace(b"Message-Id:", b"To: other@example.net\r\nMessage-Id:", 1)),
        ("added Subject", lambda d: d.replace(b"Date:", b"Subject: win\r\nDate:", 1)),
    ],
)
def test_tampering_breaks_both_signatures(keys, what, edit):
    data = sign(SIMPLE, keys).copies[0].data
    assert verifies(data, keys, 0) and verifies(data, keys, 1)
    tampered = edit(data)
    assert tampered != data
    assert not verifies(tampered, keys, 0), what
    assert not verifies(tampered, keys, 1), what


def test_relaxed_canonicalisation_survives_header_refolding_and_trailing_space(keys):
    data = sign(SIMPLE, keys).copies[0].data
    refolded = data.replace(b"Subject: hello", b"Subject:   \r\n  hello").replace(
        b"body line\r\n", b"body line  \r\n"
    )
    assert verifies(refolded, keys, 0) and verifies(refolded, keys, 1)


def test_openssl_engine_gives_the_same_bytes_as_pure_python_dkimpy(keys, monkeypatch):
    monkeypatch.setattr(dkim.time, "time", lambda: 1_795_000_000.0)
    fast = sign(SIMPLE, keys).copies[0].data
    slow = sign(SIMPLE, keys, rsa_engine="dkimpy").copies[0].data
    assert fast == slow
    assert tags(fast)["t"] == "1795000000"


def test_dkimpy_seed_format_ed25519_key_is_accepted(keys, tmp_path):
    seed_key = ed25519.Ed25519PrivateKey.generate()
    raw = seed_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    seed_file = tmp_path / "seed.key"
    seed_file.write_bytes(base64.b64encode(raw) + b"\n")  # what dknewkey --ktype ed25519 writes
    keys.records[b"e9._domainkey.example.net."] = dns_txt_value(seed_key).encode()
    cfg = dkim_config(keys)
    cfg["domains"]["example.net"].update(ed25519_selector="e9", ed25519_key_file=str(seed_file))
    raw_msg = SIMPLE.replace(b"sender@example.com", b"sender@example.net")
    result = run_chain(raw_msg, ["dkim_sign"], config={"plugins": {"dkim_sign": cfg}})
    data = result.copies[0].data
    assert tags(data, 1)["s"] == "e9" and verifies(data, keys, 1)


# -- key choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "options", "domain", "selector"),
    [
        (b"sender@example.net", {}, "example.net", "s2"),
        (b"Sender <sender@EXAMPLE.com>", {}, "example.com", "s1"),
        (b"news@mail.news.example.com", {}, "example.com", "s1"),  # a parent's key aligns (relaxed)
        (b"someone@other.org", {"default_domain": "example.net"}, "example.net", "s2"),
        (
            b"news@mail.example.com",
            {"match_parent_domains": False, "default_domain": "example.net"},
            "example.net",
            "s2",
        ),
    ],
)
def test_key_is_chosen_by_from_domain_then_default(keys, sender, options, domain, selector):
    raw = SIMPLE.replace(b"Sender <sender@example.com>", sender)
    data = sign(raw, keys, **options).copies[0].data
    assert (tags(data)["d"], tags(data)["s"]) == (domain, selector)
    assert verifies(data, keys)


def test_no_key_and_no_default_sends_unsigned_with_a_warning(keys, caplog):
    raw = SIMPLE.replace(b"sender@example.com", b"sender@other.org")
    with caplog.at_level(logging.WARNING, logger="smtpgate.plugin.dkim_sign"):
        result = sign(raw, keys)
    assert [c.verdict for c in result.copies] == [None, None]
    assert all(b"DKIM-Signature" not in c.data for c in result.copies)
    assert f"queue_id={result.ctx.queue_id}" in caplog.text
    assert "no DKIM key for other.org" in caplog.text


def test_no_key_and_no_default_is_refused_at_data_when_tempfail_is_configured(keys):
    """Known at DATA, so decided there: a 5xx, never a 250 followed by a failure in the queue."""
    raw = SIMPLE.replace(b"sender@example.com", b"sender@other.org")
    result = sign(raw, keys, on_missing_key="tempfail")
    assert result.copies == []
    assert result.verdict.reply() == "554 5.3.5 No DKIM key for other.org and no default_domain"
    assert sign(SIMPLE, keys, on_missing_key="tempfail").verdict is None


def test_dkim_switch_off_leaves_the_message_unsigned(keys):
    cfg = {"plugins": {"dkim_sign": dkim_config(keys)}, "features": {"dkim": False}}
    result = run_chain(SIMPLE, ["dkim_sign"], config=cfg)
    assert b"DKIM-Signature" not in result.copies[0].data


def test_header_block_dkimpy_cannot_parse_bounces_instead_of_retrying(keys):
    raw = SIMPLE.replace(b"MIME-Version: 1.0", b"MIME-Version : 1.0")  # space before the colon
    result = sign(raw, keys)  # header_validation (which refuses this at DATA) is not in this chain
    assert [c.verdict.reply() for c in result.copies] == [
        "550 5.6.0 Message cannot be DKIM-signed: malformed header field"
    ] * 2


# -- sealing ---------------------------------------------------------------------------------


def test_signed_copy_is_sealed_and_a_second_signing_fails_closed(keys):
    cfg = make_config({"plugins": {"dkim_sign": dkim_config(keys)}}, ["dkim_sign"])
    chain = make_chain(cfg)
    ctx = MessageContext(
        message=Message(SIMPLE, "sender@example.com", ["a@example.org"]), features={"dkim": True}
    )
    assert asyncio.run(chain.run("on_sign", ctx=ctx)) is None
    assert ctx.message.sealed_by == "dkim_sign"
    signed = ctx.message.as_bytes()
    verdict = asyncio.run(chain.run("on_sign", ctx=ctx))  # an edit after the seal
    assert verdict is not None and verdict.reply() == "451 4.3.0 Temporary local problem, try again later"
    assert ctx.message.as_bytes() == signed


class _LateEditor(Plugin):
    name = "late_editor"

    @hookimpl
    def on_sign(self, ctx: MessageContext) -> None:
        ctx.message.add_header("X-Late", "1")


class _EarlyEditor(_LateEditor):
    name = "early_editor"


def test_a_plugin_after_the_signer_is_refused_at_start(keys):
    cfg = make_config({"plugins": {"dkim_sign": dkim_config(keys)}}, ["dkim_sign"])
    with pytest.raises(ConfigError, match="late_editor would change the message after dkim_sign signs it"):
        make_chain(cfg, [_LateEditor])


def test_edits_before_the_signer_are_covered_by_the_signature(keys):
    chain = make_chain(make_config({"plugins": {"dkim_sign": dkim_config(keys)}}), [_EarlyEditor, DkimSign])
    result = asyncio.run(run_chain_async(SIMPLE, chain))
    data = result.copies[0].data
    assert b"\r\nX-Late: 1\r\n" in data and verifies(data, keys)


# -- configuration ---------------------------------------------------------------------------


def _config_error(keys: Keys, mutate: Any) -> str:
    cfg = dkim_config(keys)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        make_chain(make_config({"plugins": {"dkim_sign": cfg}}, ["dkim_sign"]))
    return str(err.value)


def test_missing_key_file_is_a_config_error_naming_key_and_file(keys, tmp_path):
    missing = tmp_path / "nope.pem"
    msg = _config_error(keys, lambda c: c["domains"]["example.com"].update(key_file=str(missing)))
    assert (
        msg
        == f'<test>: plugins.dkim_sign: domains."example.com".key_file: cannot read {missing}: No such file or directory'
    )


def test_unparsable_and_wrong_type_keys_are_config_errors(keys, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    msg = _config_error(keys, lambda c: c["domains"]["example.com"].update(key_file=str(junk)))
    assert f'domains."example.com".key_file: {junk}: not an unencrypted PEM private key' in msg
    msg = _config_error(keys, lambda c: c["domains"]["example.com"].update(key_file=str(keys.ed_com)))
    assert "key_file: " in msg and "not an RSA key" in msg
    msg = _config_error(
        keys, lambda c: c["domains"]["example.com"].update(ed25519_key_file=str(keys.rsa_com))
    )
    assert 'domains."example.com".ed25519_key_file: ' in msg and "not an Ed25519 key" in msg


def test_an_rsa_key_under_2048_bits_is_refused_at_start(keys, tmp_path):
    weak = tmp_path / "weak.pem"
    weak.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    msg = _config_error(keys, lambda c: c["domains"]["example.com"].update(key_file=str(weak)))
    assert f'domains."example.com".key_file: {weak}: RSA key has 1024 bits, at least 2048 needed' in msg


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda c: c.update(default_domain="example.org"), "default_domain 'example.org' has no"),
        (
            lambda c: c["domains"]["example.com"].pop("ed25519_key_file"),
            "ed25519_selector and ed25519_key_file go together",
        ),
        (lambda c: c["domains"]["example.com"].update(ed25519_selector="s1"), "ed25519_selector must differ"),
        (
            lambda c: c["domains"]["example.com"].update(selector="bad selector"),
            "'bad selector' is not a valid selector",
        ),
        (
            lambda c: c["domains"].update({"not a domain": c["domains"]["example.net"]}),
            "'not a domain' is not a domain",
        ),
        (lambda c: c.update(on_missing_key="drop"), "plugins.dkim_sign.on_missing_key"),
        (lambda c: c.update(sign_headers=["from"]), "plugins.dkim_sign.sign_headers: unknown key"),
    ],
)
def test_invalid_config_is_a_config_error(keys, mutate, fragment):
    assert fragment in _config_error(keys, mutate)


def test_relative_key_paths_are_under_the_data_dir(keys, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "dkim").mkdir(parents=True)
    (data_dir / "dkim" / "k.pem").write_bytes(keys.rsa_net.read_bytes())
    cfg = {
        "gateway": {"data_dir": str(data_dir)},
        "plugins": {"dkim_sign": {"domains": {"example.net": {"selector": "s2", "key_file": "dkim/k.pem"}}}},
    }
    raw = SIMPLE.replace(b"sender@example.com", b"sender@example.net")
    data = run_chain(raw, ["dkim_sign"], config=cfg).copies[0].data
    assert verifies(data, keys)


# -- golden inputs ---------------------------------------------------------------------------


def _attachments(msg: Message) -> dict[str, bytes]:
    return {p.path: p.payload_bytes() for p in msg.walk() if not p.is_multipart and p.is_attachment}


@pytest.mark.parametrize("path", sample_files() + corpus_files(), ids=lambda p: p.name)
def test_golden_messages_through_every_plugin_are_signed_and_verify(keys, tmp_path, path):
    raw = path.read_bytes()
    everything = [
        "header_validation",
        "campaign_tag",
        "css_inline",
        "click_tracking",
        "open_pixel",
        "dkim_sign",
    ]
    result = sign(raw, keys, plugins=everything, default_domain="example.com")
    if path.name in REJECTED:
        assert result.verdict.reply() == REJECTED[path.name]
        return
    assert result.verdict is None
    original_attachments = _attachments(Message(raw))
    assert len(result.copies) == 2
    for i, copy in enumerate(result.copies):
        assert copy.verdict is None
        out = tmp_path / f"{i}.eml"
        out.write_bytes(copy.data)
        data = out.read_bytes()
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        signatures = parsed.get_all("DKIM-Signature") or []
        expected = 2 if tags(data)["d"] == "example.com" else 1  # example.net has no Ed25519 key
        assert len(signatures) == expected
        assert all(verifies(data, keys, idx) for idx in range(expected))
        assert parsed["From"] is not None and not parsed.defects
        assert _attachments(Message(data)) == original_attachments


# -- through the spool, the workers and a real egress ----------------------------------------


async def _deliver(data_dir: Path, keys: Keys, egress: dict[str, Any], raw: bytes, rcpts: list[str]) -> None:
    overrides = {
        "gateway": {"data_dir": str(data_dir)},
        "spool": {"retry_min": 0.05, "retry_max": 0.2, "poll_interval": 0.05},
        "egress": egress,
        "plugins": {"dkim_sign": dkim_config(keys)},
    }
    EventRecorder.reset()
    gw = Gateway(make_config(overrides, ["header_validation", "campaign_tag", "dkim_sign"]), [EventRecorder])
    svc = gw.delivery_service(workers=0)
    await svc.start()
    try:
        verdict, ctx = await admit_message(gw.chain, raw, "billing@example.com", rcpts)
        assert verdict is None and ctx is not None
        await gw.spool.enqueue(ctx, ctx.message.as_bytes(), rcpts)
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == len(rcpts))
    finally:
        await svc.stop(5.0)
        gw.spool.close()
        EventRecorder.reset()


async def test_delivered_maildir_files_verify_and_keep_attachments(keys, data_dir):
    raw = (SAMPLES / "07-attachment-pdf.eml").read_bytes()
    await _deliver(data_dir, keys, {"type": "maildir"}, raw, ["a@example.net", "b@example.net"])
    files = sorted((data_dir / "maildir" / "new").iterdir())
    assert len(files) == 2
    for f in files:
        data = f.read_bytes()
        assert verifies(data, keys, 0) and verifies(data, keys, 1)
        assert _attachments(Message(data)) == _attachments(Message(raw))


async def test_signature_survives_an_smtp_hop(keys, data_dir):
    controller, sink = start_sink()
    try:
        raw = (SAMPLES / "08-quoted-printable-html.eml").read_bytes()
        # a line starting with "." exercises dot-stuffing on the wire
        raw = raw.replace(b"\r\n\r\n", b"\r\n\r\n.leading dot line\r\n", 1)
        egress = {"type": "smtp", "host": "127.0.0.1", "port": controller.port, "tls": "none"}
        await _deliver(data_dir, keys, egress, raw, ["a@example.net"])
    finally:
        controller.stop()
    [received] = sink.messages
    assert verifies(received.data, keys, 0) and verifies(received.data, keys, 1)


EDGE_BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b" ",
    b" \r\n",
    b"\t\r\n \r\n",
    b"a  b\t\tc \t d\r\n",
    b"a \r\n \r\nb\t\r\n\r\n",
    b"no final newline  ",
    b"bare\nLF  \n and\rCR \r",
    b"x \r \n\r\n",
    b"  lead\r\n\ttab lead\r\n",
]


def test_relaxed_body_matches_dkimpy_on_every_sample_and_corpus_message() -> None:
    assert FILES
    for path in FILES:
        raw = path.read_bytes()
        for data in (raw, Message(raw).as_bytes()):
            body = data.partition(b"\r\n\r\n")[2] or data
            assert relaxed_body(body) == Relaxed.canonicalize_body(body), path.name
            assert relaxed_body(data) == Relaxed.canonicalize_body(data), path.name


def test_relaxed_body_matches_dkimpy_on_edge_cases_and_random_input() -> None:
    for body in EDGE_BODIES:
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body
    rng = random.Random(20261121)
    alphabet = b" \t\r\n.ab"
    for _ in range(5000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body


@pytest.mark.parametrize(
    "message",
    [
        b"From: a@example.com\r\nSubject: x\r\n\r\nbody  \r\n",
        b"From: a@example.com\r\n folded\r\nSubject: x\r\n\r\n\r\nbody after an empty line\r\n",
        b"From: a@example.com\nSubject: bare LF\n\nbody\n",
        b"From: a@example.com\r\nSubject: mixed\r\n\r\nbody\nwith bare LF\r\n",
        b"\r\nno headers at all\r\n",
        b"From: a@example.com\r\nSubject: no body\r\n",
        b"From a@example.com Sat Nov 21 2026\r\nFrom: a@example.com\r\n\r\nmbox line\r\n",
    ],
)
def test_signer_splits_header_and_body_exactly_like_dkimpy(message: bytes) -> None:
    headers, body = dkim.rfc822_parse(message)
    assert split_message(message) == ([tuple(h) for h in headers], body)


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(65537, 2048), "ed25519": ed25519.Ed25519PrivateKey.generate()}


def _dkimpy_private(key: Any) -> bytes:
    """The form dkimpy's ``sign`` takes: PKCS#1 PEM for RSA, the base64 seed for Ed25519."""
    if isinstance(key, rsa.RSAPrivateKey):
        return _pem(key)
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw)


FIXED_TIME = 1_795_000_000


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize(
    "canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple")], ids=lambda c: c[0].decode()
)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_signature_field_is_byte_identical_to_stock_dkimpy_and_verifies(
    path: Path,
    canon: tuple[bytes, bytes],
    algorithm: str,
    signing_keys: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = signing_keys[algorithm]
    monkeypatch.setattr(dkim.time, "time", lambda: FIXED_TIME + 0.5)  # dkimpy's t= comes from time.time()
    for data in (path.read_bytes(), Message(path.read_bytes()).as_bytes()):  # as received, and as we send
        try:
            names = [h[0].decode("latin-1") for h in dkim.rfc822_parse(data)[0]]
        except dkim.MessageFormatError:  # dkimpy cannot parse this header block: ours must refuse too
            with pytest.raises(dkim.MessageFormatError):
                dkim_signature(data, selector=b"s1", domain=b"example.com", key=key, include=[b"from"])
            continue
        include = signed_headers(names)
        stock = dkim.DKIM(data, linesep=b"\r\n").sign(
            b"s1",
            b"example.com",
            _dkimpy_private(key),
            canonicalize=canon,
            include_headers=include,
            signature_algorithm=b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256",
        )
        ours = dkim_signature(
            data,
            selector=b"s1",
            domain=b"example.com",
            key=key,
            include=include,
            canonicalize=canon,
            timestamp=FIXED_TIME,
        )
        assert ours == stock
        assert b"t=%d;" % FIXED_TIME in ours
        record = dns_txt_value(key).encode()
        assert dkim.verify(ours + data, dnsfunc=lambda name, timeout=5, record=record: record)


@pytest.mark.parametrize(
    "canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple")], ids=lambda c: c[0].decode()
)
def test_signature_field_matches_dkimpy_on_edge_case_bodies_and_folded_headers(
    canon: tuple[bytes, bytes], signing_keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dkim.time, "time", lambda: FIXED_TIME)
    head = b"From:  A \t B <a@example.com> \r\nSubject: folded\r\n \tover  lines \r\nTo: x@example.org\r\n"
    messages = [head + b"\r\n" + body for body in EDGE_BODIES] + [
        head,
        head.replace(b"\r\n", b"\n") + b"\nbody\n",
    ]
    for data in messages:
        for key in signing_keys.values():
            include = signed_headers(["From", "Subject", "To"])
            ours = dkim_signature(
                data,
                selector=b"s1",
                domain=b"example.com",
                key=key,
                include=include,
                canonicalize=canon,
                timestamp=FIXED_TIME,
            )
            stock = dkim.DKIM(data, linesep=b"\r\n").sign(
                b"s1",
                b"example.com",
                _dkimpy_private(key),
                canonicalize=canon,
                include_headers=include,
                signature_algorithm=b"rsa-sha256"
                if isinstance(key, rsa.RSAPrivateKey)
                else b"ed25519-sha256",
            )
            assert ours == stock, data


def _dkimpy_body_hash(message: bytes, canon: bytes) -> bytes:
    """The ``bh=`` dkimpy computes: its own parse, its own canonicalisation, SHA-256, base64."""
    _, body = dkim.rfc822_parse(message)
    algorithm = dkim.canonicalization.ALGORITHMS[canon]
    return base64.b64encode(hashlib.sha256(algorithm.canonicalize_body(body)).digest())


def _mutated(rng: random.Random, body: bytes, pieces: list[bytes]) -> bytes:
    """``body`` with one to three random spans replaced (what differs between two copies)."""
    out = bytearray(body)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(0, len(out) + 1)
        out[at : at + rng.randrange(0, 4)] = rng.choice(pieces)
    return bytes(out)


@pytest.mark.parametrize("canon", [b"relaxed", b"simple"])
def test_body_hash_of_each_successive_copy_equals_dkimpy_with_pieces_reused(
    canon: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each copy's body hash reuses the pieces the previous body shared with it: generated bodies
    with tabs, space runs, trailing whitespace, empty lines at the end, bare LF and lone CR,
    each followed by copies changed at random places, must all hash as dkimpy hashes them."""
    monkeypatch.setattr(signer, "_PIECE", 8)  # many pieces in short bodies: every boundary case
    monkeypatch.setattr(signer, "_pieces", None)
    rng = random.Random(20261203)
    tokens = [b" ", b"\t", b"  \t ", b"\r\n", b"\r\n", b"\r\n\r\n", b"a", b"bc", b" \r\n", b"x" * 9]
    rare = [b"\n", b"\r", b"\r\r\n"]  # bare LF (dkimpy's parser rewrites it) and lone CR
    reused = 0
    for _ in range(400):
        body = b"".join(rng.choice(tokens) for _ in range(rng.randrange(0, 80)))
        for _ in range(8):
            message = b"From: a@example.com\r\nSubject: copy\r\n\r\n" + body
            monkeypatch.setattr(signer, "_last", None)  # (only the piece memo may be reused)
            before = signer._pieces
            _, bodyhash = signer._parsed(message, canon)
            assert bodyhash == _dkimpy_body_hash(message, canon), message
            after = signer._pieces
            if before is not None and after is not None and after is not before:
                reused += sum(1 for a, b in zip(after.states, before.states, strict=False) if a is b)
            body = _mutated(rng, body, tokens + rare if rng.random() < 0.1 else tokens)
    assert reused > 500  # the memo was really used, not just rebuilt


def test_bare_lf_search_agrees_with_counting_lf_and_crlf() -> None:
    """The body's bare-LF check (one regex scan) says what comparing the LF and CRLF counts said."""
    rng = random.Random(17)
    tokens = [b"\n", b"\r", b"\r\n", b"\r\r\n", b"\n\r", b"a", b" "]
    for _ in range(3000):
        data = b"".join(rng.choice(tokens) for _ in range(rng.randrange(0, 12)))
        assert (signer._BARE_LF.search(data) is not None) == (data.count(b"\n") != data.count(b"\r\n")), data


def test_body_pieces_are_cut_only_where_content_follows() -> None:
    """Trailing empty lines are dropped by the end-of-body rule: a piece boundary inside them
    would hash them. Bodies ending in many empty or blank lines still hash as dkimpy does."""
    for tail in (b"\r\n" * 3000, b" \t\r\n" * 2000, b"\r\n \r\n\t\r\n" * 900, b""):
        for head in (b"", b"text\r\n", b"x" * 5000 + b"\r\n"):
            message = b"From: a@example.com\r\n\r\n" + head + tail
            for canon in (b"relaxed", b"simple"):
                signer._last = None
                assert signer._parsed(message, canon)[1] == _dkimpy_body_hash(message, canon)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_successive_copies_of_a_message_are_signed_as_stock_dkimpy_signs_each(
    path: Path, signing_keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies that differ near the end (a pixel), near the start (a first link) or not at all,
    signed one after another as a worker does: each field is the one dkimpy gives that copy."""
    monkeypatch.setattr(dkim.time, "time", lambda: FIXED_TIME + 0.5)
    data = Message(path.read_bytes()).as_bytes()
    try:
        names = [h[0].decode("latin-1") for h in dkim.rfc822_parse(data)[0]]
    except dkim.MessageFormatError:
        return  # refused by both (test_signature_field_is_byte_identical_to_stock_dkimpy_and_verifies)
    include = signed_headers(names)
    cut = data.find(b"\r\n\r\n") + 4
    end = (
        data.rfind(b"\r\n", cut, len(data) - 2) + 2 if data.rfind(b"\r\n", cut, len(data) - 2) >= cut else cut
    )
    copies = [data, data]
    for n in range(3):
        copies.append(data[:end] + b'<img src=3D"https://t.example/o/%d">\r\n' % n + data[end:])
        copies.append(data[:cut] + b"copy %d  \t \r\n" % n + data[cut:])
    key = signing_keys["rsa"]
    for copy in copies:
        copy = bytes(bytearray(copy))  # a new object each time, as each copy is
        stock = dkim.DKIM(copy, linesep=b"\r\n").sign(
            b"s1",
            b"example.com",
            _dkimpy_private(key),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        )
        ours = dkim_signature(
            copy, selector=b"s1", domain=b"example.com", key=key, include=include, timestamp=FIXED_TIME
        )
        assert ours == stock
