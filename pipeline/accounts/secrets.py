"""Secrets of credentials: salted slow hashes, constant-time verification, new keys and passwords.

Secrets are only ever stored as salted scrypt hashes (``scrypt$n$r$p$salt$hash``;
``pbkdf2_sha256$iterations$salt$hash`` is also read, for FIPS setups). Comparing is
constant-time. Generated API keys look like ``sg_<key id>_<secret>``; the key id finds the row,
so a wrong key costs one hash, not one per credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
API_KEY_PREFIX = "sg_"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """A salted scrypt hash of ``secret`` in the ``scrypt$n$r$p$salt$hash`` format."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def hash_secret_pbkdf2(secret: str, iterations: int = 600_000) -> str:
    """A salted PBKDF2-HMAC-SHA256 hash (``pbkdf2_sha256$iterations$salt$hash``), for FIPS setups."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations, 32)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def check_hash_format(stored: str) -> None:
    """Raise ``ValueError`` when ``stored`` is not a hash this module can verify."""
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if n < 2 or n & (n - 1) or r < 1 or p < 1:
                raise ValueError
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            if int(parts[1]) < 1:
                raise ValueError
        else:
            raise ValueError
        _unb64(parts[-2])
        _unb64(parts[-1])
    except (ValueError, IndexError, base64.binascii.Error):  # type: ignore[attr-defined]
        raise ValueError(
            "secret_hash must look like scrypt$N$r$p$salt$hash (see `smtpgate credentials hash`)"
        ) from None


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches ``stored`` (constant-time compare; slow by design)."""
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt":
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            expected = _unb64(parts[5])
            digest = hashlib.scrypt(
                secret.encode("utf-8"), salt=_unb64(parts[4]), n=n, r=r, p=p, dklen=len(expected),
                maxmem=256 * 1024 * 1024,
            )
        elif parts[0] == "pbkdf2_sha256":
            expected = _unb64(parts[3])
            digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), _unb64(parts[2]), int(parts[1]), len(expected))
        else:
            return False
    except (ValueError, IndexError):
        return False
    return hmac.compare_digest(digest, expected)


def new_api_key() -> tuple[str, str]:
    """``(key_id, api_key)`` for a new generated key."""
    key_id = secrets.token_hex(4)
    return key_id, f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def new_password() -> str:
    return secrets.token_urlsafe(18)
