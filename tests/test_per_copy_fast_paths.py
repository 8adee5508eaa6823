"""The per-recipient-copy work (tokens, VERP addresses, context fan-out, trace rows) made cheaper
must make exactly what the straightforward computation made.

The oracle is the code as it was: ``json.dumps`` of the positional row, ``hmac.new`` per MAC,
``base64.b32encode`` for the recipient hash, ``copy.deepcopy`` of notes and metadata, the trace
rows built by one comprehension. Each fast path is compared with it on generated inputs, and the
whole default chain (every tracking feature on, DKIM with a real key) must give byte-identical
copies with the old functions patched in, for every sample and every real template.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st
from test_message_fuzz import SETTINGS

import pipeline.chain.processing as processing
import pipeline.contract.context as context
import pipeline.toolkit.tokens as tokens
import pipeline.toolkit.verp as verp
from pipeline.chain.admission import admit_message
from pipeline.chain.driver import make_chain, make_config
from pipeline.chain.runner import TraceEntry
from pipeline.config import ChainSection
from pipeline.contract.context import Credential, MessageContext
from pipeline.contract.headers import Edit
from pipeline.contract.message import Message
from pipeline.contract.vocabulary import EditAction
from pipeline.delivery.workers import run_processing
from pipeline.toolkit.tokens import TokenSigner
from tests.support import REFUSED_AT_DATA, complete_message, corpus_files, processed_files, sample_files

FIELDS = ("k", "u", "q", "r", "c", "l", "s", "h")
KEYS = {"k1": b"per-copy secret", "old": "pass phrase \u00e9".encode()}


# -- the straightforward computations (the code before the fast paths) -------------------------
def ref_b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ref_pack(payload: dict[str, Any]) -> bytes:
    row: list[Any] = [payload.get(name) for name in FIELDS]
    while row and row[-1] is None:
        row.pop()
    if not set(FIELDS).issuperset(payload):
        extra = {k: v for k, v in payload.items() if k not in FIELDS and v is not None}
        if extra:
            row += [None] * (len(FIELDS) - len(row)) + [extra]
    return json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def ref_sign(signer: TokenSigner, payload: dict[str, Any]) -> str:
    """AES-256-GCM-SIV under HKDF-SHA256 of the key id's secret, as the module docstring says."""
    kid = signer.key_id
    info = b"smtpgate tracking token v2 " + kid.encode("utf-8")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(KEYS[kid])
    sealed = AESGCMSIV(key).encrypt(bytes(12), ref_pack(payload), kid.encode("utf-8"))
    return f"{ref_b64e(sealed[:-16])}.{kid}.{ref_b64e(sealed[-16:])}"


def ref_mac(signer: TokenSigner, text: str, key_id: str | None = None) -> str | None:
    key = KEYS.get(key_id or signer.key_id)
    if key is None:
        return None
    return ref_b64e(hmac.new(key, text.encode("ascii"), hashlib.sha256).digest()[:16])


def ref_recipient_hash(address: str) -> str:
    digest = hashlib.sha256(address.strip().strip("<>").lower().encode("utf-8")).digest()
    return base64.b32encode(digest[:5]).decode("ascii").lower()


def ref_signed_text(kind: str, queue_id: str, rcpt_hash: str, kid: str) -> str:
    body = json.dumps({"k": kind, "q": queue_id, "h": rcpt_hash}, separators=(",", ":")).encode("utf-8")
    return f"{base64.urlsafe_b64encode(body).rstrip(b'=').decode('ascii')}.{kid}"


def ref_trace_summary(entries: list[TraceEntry]) -> list[dict[str, Any]]:
    return [
        {
            "phase": e.phase,
            "plugin": e.plugin,
            "verdict": e.verdict,
            "ms": round(e.ms, 3),
            "edits": [str(edit) for edit in e.edits],
            **({"error": e.error} if e.error else {}),
        }
        for e in entries
    ]


# -- generated inputs ----------------------------------------------------------------------------
# Text with what JSON must escape (quotes, backslashes, controls), non-ASCII, astral characters.
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", '"', "\\", "\x00\x1f\x7f", "\u2028", "\U0001f600", 'https://x.example/?a=1&b="2"#\u00e9']
)
scalars = st.none() | texts | st.integers() | st.booleans() | st.floats(allow_nan=False)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
payloads = st.dictionaries(st.sampled_from(FIELDS) | texts, st.none() | texts | values, max_size=10)
string_payloads = st.dictionaries(st.sampled_from(FIELDS), st.none() | texts, max_size=8)


def signer() -> TokenSigner:
    return TokenSigner(KEYS, "k1")


@given(payloads | string_payloads)
@SETTINGS
def test_packed_payload_is_the_json_the_encoder_wrote(payload: dict[str, Any]) -> None:
    assert tokens._pack(payload) == ref_pack(payload)


@given(string_payloads, st.sampled_from(sorted(KEYS)))
@SETTINGS
def test_a_token_is_the_one_the_straightforward_sealing_made(payload: dict[str, Any], kid: str) -> None:
    s = signer()
    s.key_id = kid
    token = s.sign(payload)
    assert token == ref_sign(s, payload)
    assert s.verify(token) == {k: v for k, v in payload.items() if v is not None}


@given(payloads)
@SETTINGS
def test_a_token_with_any_json_values_is_the_one_the_straightforward_sealing_made(
    payload: dict[str, Any],
) -> None:
    assert signer().sign(payload) == ref_sign(signer(), payload)


def test_a_repeated_link_gets_the_token_sealing_it_again_gives() -> None:
    """Tokens are kept per (key id, payload): a link twice in a copy is sealed once, a rotated
    key id seals anew, and the kept set stays bounded."""
    s = signer()
    payload = {"k": "c", "u": "https://shop.example/", "q": "Q1", "r": "a@example.org"}
    first = s.sign(payload)
    assert s.sign(dict(payload)) == first == ref_sign(s, payload)
    s.key_id = "old"
    assert s.sign(payload) == ref_sign(s, payload) != first
    s.key_id = "k1"
    for i in range(3 * tokens._SEALED_KEPT):
        p = {**payload, "r": f"u{i}@example.org"}
        assert s.sign(p) == ref_sign(s, p)
    assert len(s._sealed) <= tokens._SEALED_KEPT
    assert s.sign(payload) == first


def test_surrogates_and_unknown_types_fail_as_before() -> None:
    s = signer()
    for bad in ({"u": "\udcff"}, {"u": object()}, {"zz": {1, 2}}):
        with pytest.raises((UnicodeEncodeError, TypeError)) as fast:
            s.sign(bad)
        with pytest.raises(fast.type):
            ref_sign(s, bad)


@given(texts.filter(str.isascii), st.sampled_from([None, "", "k1", "old", "gone"]))
@SETTINGS
def test_a_mac_is_the_one_hmac_new_made(text: str, key_id: str | None) -> None:
    s = signer()
    assert s.mac(text, key_id) == ref_mac(s, text, key_id)
    assert s.mac(text, key_id) == s.mac(text, key_id)  # the kept key schedule is not consumed


def test_a_mac_of_non_ascii_text_raises_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        signer().mac("caf\u00e9")


def test_legacy_tokens_still_verify_with_the_kept_key_schedule() -> None:
    body = ref_b64e(json.dumps({"k": "c", "u": "https://a.example/"}).encode())
    token = f"{body}.k1.{ref_mac(signer(), f'{body}.k1')}"
    assert signer().verify(token) == {"k": "c", "u": "https://a.example/"}
    assert signer().verify(token[:-2] + "AA") is None


addresses = st.builds(lambda a, b: f" <{a}@{b}> ", texts, texts) | texts


@given(addresses)
@SETTINGS
def test_recipient_hash_is_the_base32_of_the_digest(address: str) -> None:
    assert verp.recipient_hash(address) == ref_recipient_hash(address)


@given(texts, st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z"), texts, texts)
@SETTINGS
def test_verp_signed_text_is_the_json_dumps_form(kind: str, queue_id: str, rcpt_hash: str, kid: str) -> None:
    assert verp._signed_text(kind, queue_id, rcpt_hash, kid) == ref_signed_text(
        kind, queue_id, rcpt_hash, kid
    )


@given(st.from_regex(r"\A[A-Za-z0-9_-]{1,16}\Z"), addresses, st.sampled_from(["b", "u"]))
@SETTINGS
def test_verp_local_part_is_the_straightforward_one_and_parses(queue_id: str, rcpt: str, kind: str) -> None:
    s = signer()
    h = ref_recipient_hash(rcpt)
    expected = f"bounces+{queue_id}.{h}.k1.{ref_mac(s, ref_signed_text(kind, queue_id, h, 'k1'))}"
    assert verp.verp_local_part(s, "bounces", kind, queue_id, rcpt) == expected
    assert verp.parse_verp(s, expected) == verp.VerpToken(kind, queue_id, h)


notes_values = st.dictionaries(texts, values, max_size=4) | st.dictionaries(texts, scalars, max_size=6)


@given(notes_values, notes_values)
@SETTINGS
def test_a_recipient_context_copies_notes_and_metadata_as_deepcopy_did(
    notes: dict[str, Any], meta: dict[str, Any]
) -> None:
    ctx = MessageContext(message=Message(complete_message()), notes=notes, metadata=meta, tags=["t"])
    before = copy.deepcopy((notes, meta))
    one = ctx.for_recipient("a@example.org")
    assert (one.notes, one.metadata) == before
    assert one.notes is not notes and one.metadata is not meta
    for state in (one.notes, one.metadata):  # one recipient's changes, however deep
        for value in state.values():
            if isinstance(value, list | dict):
                value.clear()
        state["added"] = [1]
    assert (ctx.notes, ctx.metadata) == before
    assert ctx.for_recipient("b@example.org").notes == before[0]  # the next copy starts clean


def test_nested_and_shared_notes_still_deep_copy() -> None:
    shared: list[Any] = [1]
    ctx = MessageContext(message=Message(complete_message()), notes={"a": shared, "b": shared})
    one = ctx.for_recipient("a@example.org")
    assert one.notes["a"] is one.notes["b"] and one.notes["a"] is not shared  # deepcopy's memo kept


def test_credential_from_record_ignores_unknown_keys() -> None:
    cred = Credential("app", features={"trackclicks": True}, locked=frozenset({"dkim"}), webhooks=("w",))
    assert Credential.from_record({**cred.to_record(), "from_a_newer_version": 1}) == cred


@given(
    st.lists(
        st.tuples(
            texts,
            texts,
            texts,
            st.floats(min_value=0, max_value=1e6),
            st.lists(st.tuples(texts, st.sampled_from(list(EditAction)), texts, texts), max_size=3),
            st.none() | texts,
            st.none() | texts,
        ),
        max_size=8,
    )
)
@SETTINGS
def test_trace_rows_are_the_ones_the_comprehension_made(rows: list[Any]) -> None:
    entries = [
        TraceEntry(phase, plugin, verdict, ms, [Edit(*e) for e in edits], error, rcpt)
        for phase, plugin, verdict, ms, edits, error, rcpt in rows
    ]
    fast, ref = processing.trace_summary(entries), ref_trace_summary(entries)
    assert fast == ref
    assert [list(r) for r in fast] == [list(r) for r in ref]  # key order too (the message log's JSON)


# -- the whole chain, old computations patched in ------------------------------------------------
RCPTS = ["ann@example.com", "Bob.Smith@Example.ORG", "\u00fcser@example.net"]


@pytest.fixture(scope="module")
def tracking_chain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The default chain, every tracking feature on (unsubscribe with mailto, replacing the
    sender's own; clicks in text parts too), DKIM with a real key."""
    directory = tmp_path_factory.mktemp("per-copy")
    key_file = directory / "k.pem"
    key_file.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config = make_config(
        {
            "gateway": {"data_dir": str(directory / "data")},
            "tracking": {
                "keys": {k: v.decode() for k, v in KEYS.items()},
                "key_id": "k1",
                "base_url": "https://t.example.net",
                "bounce_domain": "bounces.example.net",
            },
            "features": {
                f: True
                for f in ("inlinecss", "trackclicks", "trackopens", "trackbounces", "listunsubscribe", "dkim")
            },
            "plugins": {
                "list_unsubscribe": {"mailto": True, "replace": True},
                "click_tracking": {"text_parts": True},
                "dkim_sign": {
                    "domains": {"example.com": {"selector": "a1", "key_file": str(key_file)}},
                    "default_domain": "example.com",
                },
            },
        },
        ChainSection().plugins,
    )
    return make_chain(config)


def straightforward(m: pytest.MonkeyPatch) -> None:
    """Every per-copy computation as it was before the fast paths."""
    m.setattr(TokenSigner, "sign", ref_sign)
    m.setattr(TokenSigner, "mac", ref_mac)
    m.setattr(verp, "recipient_hash", ref_recipient_hash)
    m.setattr(verp, "_signed_text", ref_signed_text)
    m.setattr(context, "_copy_state", copy.deepcopy)
    m.setattr(processing, "trace_summary", ref_trace_summary)


def copies(chain: Any, record: dict[str, Any], data: bytes) -> list[tuple[Any, ...]]:
    done = asyncio.run(run_processing(chain, record, data, "app@example.com", RCPTS, []))
    assert all(c.data is not None for c in done), [c.verdict for c in done]
    return [
        (c.recipient, c.mail_from, c.data, [{k: v for k, v in t.items() if k != "ms"} for t in c.trace])
        for c in done
    ]


@pytest.mark.parametrize(
    "path",
    processed_files(),
    ids=lambda p: p.name,
)
def test_every_copy_is_the_one_the_straightforward_computation_made(
    path: Path, tracking_chain: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # DKIM t= the same in both runs
    verdict, ctx = asyncio.run(admit_message(tracking_chain, path.read_bytes(), "app@example.com", RCPTS))
    assert ctx is not None and (verdict is None or verdict.code < 400), verdict  # type: ignore[attr-defined]
    record, data = ctx.to_record(), ctx.message.as_bytes()
    fast = copies(tracking_chain, record, data)
    with monkeypatch.context() as m:
        straightforward(m)
        slow = copies(tracking_chain, record, data)
    assert fast == slow


def test_the_templates_carry_every_kind_of_token(tracking_chain: Any) -> None:
    """The comparison above covers signed links, pixels, unsubscribe headers and VERP senders."""
    seen, senders = b"", []
    for path in sample_files() + corpus_files():
        if path.name in REFUSED_AT_DATA:
            continue
        verdict, ctx = asyncio.run(
            admit_message(tracking_chain, path.read_bytes(), "app@example.com", RCPTS[:1])
        )
        assert ctx is not None
        done = asyncio.run(
            run_processing(
                tracking_chain, ctx.to_record(), ctx.message.as_bytes(), "app@example.com", RCPTS[:1], []
            )
        )
        seen += b"".join(c.data or b"" for c in done)
        senders += [c.mail_from for c in done]
    assert b"t.example.net/c/" in seen and b"t.example.net/o/" in seen
    assert b"List-Unsubscribe: <https://t.example.net/u/" in seen and b"<mailto:unsub+" in seen
    assert any(s.startswith("bounces+") and s.endswith("@bounces.example.net") for s in senders)
