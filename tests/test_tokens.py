"""Tracking tokens are opaque (authenticated encryption), verifiable without a database, rotate
by key id, and still accept the earlier signed-JSON tokens found in mail already sent."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from pipeline.toolkit.tokens import TokenSigner
from pipeline.toolkit.verp import parse_verp, recipient_hash, verp_local_part

PAYLOAD = {
    "k": "c",
    "q": "Q8f3kZp2LmN4xV7a",
    "r": "jane.doe@example.org",
    "c": "spring_sale-2026",
    "l": "order-83421_a",
    "s": "shop",
    "u": "https://shop.example.com/p?id=1&ref=news&utm_source=email",
}


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_token_reveals_neither_recipient_nor_url_nor_campaign():
    token = TokenSigner({"k1": b"secret"}, "k1").sign(PAYLOAD)
    body, kid, _ = token.split(".")
    assert kid == "k1"
    raw = b64d(body)
    for clear in (b"jane", b"example", b"spring", b"shop", b"order", b"https", b'"k"'):
        assert clear not in raw
    for value in PAYLOAD.values():
        assert len(value) < 4 or value not in token


def test_a_token_opens_to_exactly_its_payload_and_only_with_its_key():
    signer = TokenSigner({"k1": b"secret"}, "k1")
    token = signer.sign(PAYLOAD)
    assert signer.verify(token) == PAYLOAD
    assert TokenSigner({"k1": b"other"}, "k1").verify(token) is None
    assert signer.verify(token.replace(".k1.", ".k2.")) is None


def test_extra_payload_keys_and_unicode_survive():
    signer = TokenSigner({"k1": b"secret"}, "k1")
    payload = {"k": "o", "r": "zoë@example.org", "x": {"nested": [1, 2]}, "u": None}
    assert signer.verify(signer.sign(payload)) == {"k": "o", "r": "zoë@example.org", "x": {"nested": [1, 2]}}


def test_rotated_key_ids_still_open_old_tokens():
    old = TokenSigner({"k1": b"one"}, "k1")
    new = TokenSigner({"k1": b"one", "k2": b"two"}, "k2")
    token = old.sign(PAYLOAD)
    assert new.verify(token) == PAYLOAD
    assert new.sign(PAYLOAD).split(".")[1] == "k2"


def test_signed_json_tokens_from_before_still_verify_but_are_never_made():
    body = base64.urlsafe_b64encode(json.dumps(PAYLOAD, separators=(",", ":")).encode()).rstrip(b"=").decode()
    mac = hmac.new(b"secret", f"{body}.k1".encode(), hashlib.sha256).digest()[:16]
    legacy = f"{body}.k1.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    signer = TokenSigner({"k1": b"secret"}, "k1")
    assert signer.verify(legacy) == PAYLOAD
    assert signer.verify(legacy[:-2] + ("AA" if legacy[-2:] != "AA" else "BB")) is None
    assert signer.sign(PAYLOAD) != legacy and "jane" not in signer.sign(PAYLOAD)


def test_tracked_link_is_shorter_than_the_signed_json_one():
    signer = TokenSigner({"k1": b"secret"}, "k1")
    body = base64.urlsafe_b64encode(json.dumps(PAYLOAD, separators=(",", ":")).encode()).rstrip(b"=")
    legacy_len = len(body) + len(".k1.") + 22
    assert len(signer.sign(PAYLOAD)) < legacy_len


def test_verp_local_part_stays_compact_and_verifiable():
    signer = TokenSigner({"k1": b"secret"}, "k1")
    local = verp_local_part(signer, "bounces", "b", "Q8f3kZp2LmN4xV7a", "Jane.Doe@example.org")
    assert len(local) <= 64 and "jane" not in local.lower()
    token = parse_verp(signer, local)
    assert token is not None and (token.kind, token.queue_id) == ("b", "Q8f3kZp2LmN4xV7a")
    assert token.rcpt_hash == recipient_hash("jane.doe@example.org")
    assert parse_verp(TokenSigner({"k1": b"other"}, "k1"), local) is None
    assert parse_verp(signer, local[:-1] + ("A" if local[-1] != "A" else "B")) is None
