"""Signed tracking tokens: what a click, open or unsubscribe link carries.

A token is ``<payload>.<key id>.<mac>``: the payload is compact JSON in base64url, the MAC is
HMAC-SHA256 over ``payload.keyid`` with that key, truncated to 128 bits. The redirect works
without a database (the original URL is inside), and keys rotate: new tokens use the current
key id, old ones verify while their key is still listed.

Payload fields: ``k`` kind (``c`` click, ``o`` open, ``u`` unsubscribe), ``u`` original URL,
``q`` queue id, ``r`` recipient, ``c`` campaign id, ``l`` letter id, ``s`` credential name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.contract.context import MessageContext

_MAC_BYTES = 16


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Signs and verifies tokens with a set of keys (key id -> secret)."""

    def __init__(self, keys: dict[str, bytes], current_key_id: str) -> None:
        if current_key_id not in keys:
            raise ValueError(f"tracking key id {current_key_id!r} has no key")
        for kid in keys:
            if not kid or "." in kid:
                raise ValueError(f"tracking key id {kid!r} must be non-empty without '.'")
        self._keys = dict(keys)
        self.key_id = current_key_id

    def _mac(self, key: bytes, signed: str) -> str:
        return _b64e(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES])

    def sign(self, payload: dict[str, Any]) -> str:
        body = _b64e(json.dumps({k: v for k, v in payload.items() if v is not None}, separators=(",", ":"),
                                ensure_ascii=False).encode("utf-8"))
        signed = f"{body}.{self.key_id}"
        return f"{signed}.{self._mac(self._keys[self.key_id], signed)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The payload of a genuine token, else ``None`` (tampered, truncated, unknown key)."""
        if not token.isascii():  # never made by sign(); the MAC and compare_digest need ASCII
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        body, kid, mac = parts
        key = self._keys.get(kid)
        if key is None:
            return None
        if not hmac.compare_digest(self._mac(key, f"{body}.{kid}"), mac):
            return None
        try:
            payload = json.loads(_b64d(body))
        except (ValueError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None


def load_signer(keys: dict[str, str], key_id: str, data_dir: Path) -> TokenSigner:
    """The signer for a gateway: configured keys, or one generated once into the data dir.

    A generated key is written with mode 0600 and reused on every start, so links in mail
    already sent keep working after a restart.
    """
    if keys:
        return TokenSigner({k: v.encode("utf-8") for k, v in keys.items()}, key_id)
    path = data_dir / "tracking.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return TokenSigner({key_id: path.read_text().strip().encode("utf-8")}, key_id)


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
