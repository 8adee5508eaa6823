"""Opaque tracking tokens: what a click, open or unsubscribe link carries.

A token is ``<ciphertext>.<key id>.<tag>``: the payload, compact JSON, encrypted with
AES-256-GCM-SIV (authenticated encryption, :mod:`cryptography`) under a key derived per key id
(HKDF-SHA256 of that id's secret), the key id bound in as associated data, base64url. Link
scanners, proxies and anyone the mail is forwarded to see random characters: the recipient,
credential, campaign and target URL are inside, unreadable and unforgeable. The redirect still
works without a database (the original URL is inside), and keys rotate: new tokens use the
current key id, old ones open while their key is still listed.

GCM-SIV is used with a fixed nonce, i.e. as deterministic authenticated encryption (RFC 8452
is designed for nonce reuse: it reveals only that two tokens hold the same payload, which the
same link to the same recipient does anyway); that saves the 16 characters a random nonce
would add to every URL.

Payload fields: ``k`` kind (``c`` click, ``o`` open, ``u`` unsubscribe), ``u`` original URL,
``q`` queue id, ``r`` recipient, ``c`` campaign id, ``l`` letter id, ``s`` credential name,
``h`` recipient hash; they travel by position, other keys in a trailing object.

Tokens made before this format (base64 JSON with an HMAC-SHA256 tag, the same three-part
shape) still verify, so links in mail already sent keep working; they are never made again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.storage.generated import generated_secret

if TYPE_CHECKING:
    from pipeline.contract.context import MessageContext

_MAC_BYTES = 16
_TAG_BYTES = 16  # the GCM-SIV tag
_NONCE = bytes(12)  # deterministic AEAD (see the module docstring)
_FIELDS = ("k", "u", "q", "r", "c", "l", "s", "h")
_FIELD_SET = frozenset(_FIELDS)
_SEALED_KEPT = 256  # recent tokens kept per signer (the links of the copy being made)
_URLSAFE = bytes.maketrans(b"+/", b"-_")
# What ``json.dumps(..., ensure_ascii=False)`` writes for a str (the C function it calls itself).
_JSON_STR = json.encoder.encode_basestring
# json.dumps with these options builds a new encoder per call; one made once encodes the same.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _b64e(data: bytes) -> str:
    """base64url without padding (``urlsafe_b64encode`` is this translate after this call)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _pack(payload: dict[str, Any]) -> bytes:
    """Positional compact JSON: ``["c","https://...","Q1",...]`` (``None`` values dropped).

    Called once per link per recipient copy: a row of strings and ``None`` (every token the
    built-in plugins make) is written directly, as the JSON encoder writes it (``"[" + items
    joined by "," + "]"``, each string by the encoder's own function); anything else goes
    through the encoder."""
    row: list[Any] = list(map(payload.get, _FIELDS))
    while row and row[-1] is None:
        row.pop()
    if not _FIELD_SET.issuperset(payload):
        extra = {k: v for k, v in payload.items() if k not in _FIELD_SET and v is not None}
        if extra:
            row += [None] * (len(_FIELDS) - len(row)) + [extra]
            return _JSON.encode(row).encode("utf-8")
    try:  # the string function refuses anything but a str (as the encoder does not)
        items = ["null" if value is None else _JSON_STR(value) for value in row]
    except TypeError:
        return _JSON.encode(row).encode("utf-8")
    return f"[{','.join(items)}]".encode()


def _unpack(data: bytes) -> dict[str, Any] | None:
    row = json.loads(data)
    if not isinstance(row, list) or len(row) > len(_FIELDS) + 1:
        return None
    out = {name: value for name, value in zip(_FIELDS, row, strict=False) if value is not None}
    if len(row) > len(_FIELDS):
        if not isinstance(row[-1], dict):
            return None
        out.update(row[-1])
    return out


class TokenSigner:
    """Seals and opens tokens with a set of keys (key id -> secret)."""

    def __init__(self, keys: dict[str, bytes], current_key_id: str) -> None:
        if current_key_id not in keys:
            raise ValueError(f"tracking key id {current_key_id!r} has no key")
        for kid in keys:
            if not kid or "." in kid:
                raise ValueError(f"tracking key id {kid!r} must be non-empty without '.'")
        self._keys = dict(keys)
        self._aead = {kid: AESGCMSIV(self._derive(kid, secret)) for kid, secret in keys.items()}
        self._aad = {kid: kid.encode("utf-8") for kid in keys}  # the key id as associated data
        # HMAC-SHA256 with each key, its key schedule done once: a MAC copies it (VERP per copy)
        self._hmac = {kid: hmac.new(secret, digestmod=hashlib.sha256) for kid, secret in keys.items()}
        # Sealing is a pure function of (key id, packed payload): a link that appears twice in a copy
        # (logo and button to the same page) is sealed once. Bounded; cleared when full.
        self._sealed: dict[tuple[str, bytes], str] = {}
        self.key_id = current_key_id

    @staticmethod
    def _derive(kid: str, secret: bytes) -> bytes:
        """A 256-bit AEAD key per key id (the configured secret may be any length or a passphrase)."""
        info = b"smtpgate tracking token v2 " + kid.encode("utf-8")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)

    def _mac(self, kid: str, signed: str) -> str:
        """HMAC-SHA256 of ``signed`` with key ``kid`` (a known one), 128 bits, base64url."""
        h = self._hmac[kid].copy()
        h.update(signed.encode("ascii"))
        return _b64e(h.digest()[:_MAC_BYTES])

    def mac(self, text: str, key_id: str | None = None) -> str | None:
        """HMAC-SHA256 (128 bits, base64url) of ``text`` with a key id's secret (default: the
        current one); ``None`` for an unknown key id. For compact signed ids such as VERP."""
        kid = key_id or self.key_id
        return self._mac(kid, text) if kid in self._hmac else None

    def sign(self, payload: dict[str, Any]) -> str:
        """An opaque token holding ``payload`` (a JSON-able dict; ``None`` values dropped)."""
        kid = self.key_id
        key = (kid, _pack(payload))
        token = self._sealed.get(key)
        if token is None:
            sealed = self._aead[kid].encrypt(_NONCE, key[1], self._aad[kid])
            token = f"{_b64e(sealed[:-_TAG_BYTES])}.{kid}.{_b64e(sealed[-_TAG_BYTES:])}"
            if len(self._sealed) >= _SEALED_KEPT:
                self._sealed.clear()
            self._sealed[key] = token
        return token

    def verify(self, token: str) -> dict[str, Any] | None:
        """The payload of a genuine token, else ``None`` (tampered, truncated, unknown key)."""
        if not token.isascii():  # never made by sign()
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        body, kid, tag = parts
        aead = self._aead.get(kid)
        if aead is None:
            return None
        try:
            raw_body, raw_tag = _b64d(body), _b64d(tag)
        except ValueError:
            return None
        if _b64e(raw_body) != body or _b64e(raw_tag) != tag:
            return None  # a non-canonical spelling of the same bytes: not what sign() made
        sealed = raw_body + raw_tag
        if len(sealed) >= _TAG_BYTES and len(tag) == 22:
            try:
                return _unpack(aead.decrypt(_NONCE, sealed, kid.encode("utf-8")))
            except InvalidTag:
                pass
            except (ValueError, UnicodeDecodeError):
                return None
        return self._verify_legacy(body, kid, tag)

    def _verify_legacy(self, body: str, kid: str, mac: str) -> dict[str, Any] | None:
        """A token of the earlier HMAC-signed format (links already sent keep working)."""
        if not hmac.compare_digest(self._mac(kid, f"{body}.{kid}"), mac):
            return None
        try:
            payload = json.loads(_b64d(body))
        except (ValueError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None


def load_signer(
    keys: dict[str, str], key_id: str, data_dir: Path, storage_url: str | None = None
) -> TokenSigner:
    """The signer for a gateway: configured keys, or one generated once.

    A generated key is written with mode 0600 into the data dir and reused on every start, so links
    in mail already sent keep working after a restart; with ``storage_url`` (``[storage] url``) it is
    the shared database's one row instead, so every node verifies every other node's links.
    """
    if keys:
        return TokenSigner({k: v.encode("utf-8") for k, v in keys.items()}, key_id)
    return TokenSigner(
        {key_id: generated_secret("tracking.key", data_dir, storage_url).encode("utf-8")}, key_id
    )


def validate_base_url(value: str) -> str:
    """A tracking base must be an absolute http(s) URL; the trailing slash is dropped."""
    if not value.lower().startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ValueError(f"base_url must be an absolute http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def copy_payload(kind: str, ctx: MessageContext) -> dict[str, Any]:
    """What every token of one recipient copy carries: kind, queue id, recipient, campaign,
    letter id and credential (``sign`` drops the ``None`` values)."""
    return {
        "k": kind,
        "q": ctx.queue_id,
        "r": ctx.recipient,
        "c": ctx.campaign_id,
        "l": ctx.letter_id,
        "s": ctx.credential.name if ctx.credential else None,
    }
