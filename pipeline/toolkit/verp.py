"""Compact signed local parts for the bounce domain: ``{prefix}+{queue id}.{rcpt hash}.{key id}.{mac}``.

Why not a plain tracking token: it carries JSON and is ~100 characters, but RFC 5321 caps a
local part at 64 and receivers (ours included) refuse longer ones. This form is ~57: the queue
id, 8 base32 characters of SHA-256 of the recipient (resolved against the report's own
recipient or the copies recorded for that queue id), the key id and the token MAC. The MAC is
HMAC-SHA256 with the tracking key of that key id (:meth:`~pipeline.toolkit.tokens.TokenSigner.mac`)
over the compact id (kind, queue id, hash), so key rotation works as for links. Nothing
personal is in the clear (the hash is of the recipient, 40 bits, only checked against addresses
the gateway already has); the form and the MAC input are those of earlier releases, so bounces to
mail sent before still resolve.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.contract.plugin import TokenSigner

MAX_LOCAL_PART = 64
_QUEUE_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_B32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower-cased
_JSON_STR = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (ensure_ascii)


def recipient_hash(address: str) -> str:
    """8 base32 characters naming a recipient within one queue id.

    Made once per recipient copy: the 40 bits are spelled out directly, 5 bits a character
    (what ``base64.b32encode(digest[:5]).lower()`` gives, without its general loop)."""
    digest = hashlib.sha256(address.strip().strip("<>").lower().encode("utf-8")).digest()
    n = int.from_bytes(digest[:5], "big")
    b32 = _B32
    return (
        b32[n >> 35]
        + b32[(n >> 30) & 31]
        + b32[(n >> 25) & 31]
        + b32[(n >> 20) & 31]
        + b32[(n >> 15) & 31]
        + b32[(n >> 10) & 31]
        + b32[(n >> 5) & 31]
        + b32[n & 31]
    )


@dataclass(frozen=True)
class VerpToken:
    kind: str  # "b" bounce, "u" unsubscribe
    queue_id: str
    rcpt_hash: str

    def match(self, candidates: Iterable[str | None]) -> str | None:
        """The first candidate address whose hash is ours."""
        for addr in candidates:
            if addr and recipient_hash(addr) == self.rcpt_hash:
                return addr.strip().strip("<>").lower()
        return None


def _signed_text(kind: str, queue_id: str, rcpt_hash: str, kid: str) -> str:
    """What the MAC covers: the compact id as base64url JSON, then the key id (the historical form).

    The JSON is ``json.dumps({"k": kind, "q": queue_id, "h": rcpt_hash}, separators=(",", ":"))``,
    written directly (each value by the encoder's own string function): one per recipient copy."""
    body = f'{{"k":{_JSON_STR(kind)},"q":{_JSON_STR(queue_id)},"h":{_JSON_STR(rcpt_hash)}}}'.encode("ascii")
    return f"{base64.urlsafe_b64encode(body).rstrip(b'=').decode('ascii')}.{kid}"


def verp_local_part(signer: TokenSigner, prefix: str, kind: str, queue_id: str, recipient: str) -> str:
    """The signed local part; raises ``ValueError`` if it can't be made to fit 64 characters."""
    if not _QUEUE_ID.match(queue_id):
        raise ValueError(f"queue id {queue_id!r} cannot go into a bounce address")
    h = recipient_hash(recipient)
    kid = signer.key_id
    mac = signer.mac(_signed_text(kind, queue_id, h, kid), kid)
    local = f"{prefix}+{queue_id}.{h}.{kid}.{mac}"
    if len(local) > MAX_LOCAL_PART:
        raise ValueError(
            f"bounce address local part is {len(local)} characters (max 64); use a shorter key id"
        )
    return local


def parse_verp(signer: TokenSigner, local_part: str) -> VerpToken | None:
    """The token in a local part, or ``None`` if it is missing, malformed or not genuine."""
    _, plus, rest = local_part.partition("+")
    parts = rest.split(".") if plus else []
    if len(parts) != 4 or not rest.isascii():
        return None
    queue_id, h, kid, mac = parts
    for kind in ("b", "u"):
        expected = signer.mac(_signed_text(kind, queue_id, h, kid), kid)
        if expected is not None and hmac.compare_digest(expected, mac):
            return VerpToken(kind, queue_id, h)
    return None
