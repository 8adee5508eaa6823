"""DKIM key files and DNS records: load the keys the signer uses, generate new ones, and
print the TXT record to publish (``smtpgate dkim keygen`` and ``smtpgate init`` call
:func:`generate_key`).

A private key is written with mode 0600 before any byte of it reaches the disk (``os.open``
with the mode, not a chmod afterwards), and an existing key is never overwritten unless asked:
replacing a published key breaks every signature in flight.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

MIN_RSA_BITS = 2048  # the issue: RSA-2048 always (RFC 8301 allows 1024; Postal users were stuck there)
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$"
)
TXT_CHUNK = 255  # one DNS character-string holds at most 255 octets (RFC 1035 section 3.3)


def is_dns_name(name: str) -> bool:
    """A domain or selector: dot-separated labels of letters, digits, ``-`` and ``_``."""
    return bool(_DNS_NAME.match(name))


def _load_pem(path: Path, data: bytes) -> Any:
    """Any unencrypted PEM private key; a one-line error naming the file otherwise."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from None


def load_rsa_key(path: Path) -> rsa.RSAPrivateKey:
    """An unencrypted PEM RSA private key (PKCS#1 or PKCS#8) of at least 2048 bits."""
    key = _load_pem(path, path.read_bytes())
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA key (use ed25519_key_file for Ed25519 keys)")
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"{path}: RSA key has {key.key_size} bits, at least {MIN_RSA_BITS} needed")
    return key


def load_ed25519_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 private key: PEM (PKCS#8, as keygen writes) or dkimpy's base64 32-byte seed."""
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        key = _load_pem(path, data)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 key")
        return key
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        seed = b""
    if len(seed) != 32:
        raise ValueError(f"{path}: not an Ed25519 key (PEM, or a base64 32-byte seed)")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def dns_txt_value(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The DKIM key record (RFC 6376 section 3.6.1) to publish at ``selector._domainkey.domain``."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """One domain's keys, loaded and ready."""

    domain: str
    selector: str
    rsa: rsa.RSAPrivateKey
    rsa_pem: bytes  # PKCS#1 PEM, the form dkimpy parses
    ed25519_selector: str | None = None
    ed25519: ed25519.Ed25519PrivateKey | None = None

    @property
    def ed25519_seed(self) -> bytes:
        assert self.ed25519 is not None
        raw = self.ed25519.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return base64.b64encode(raw)


def split_txt(value: str, size: int = TXT_CHUNK) -> list[str]:
    """``value`` cut into DNS character-strings of at most ``size`` bytes (ASCII, so chars)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def zone_record(name: str, value: str) -> str:
    """A zone-file TXT record: the value as quoted strings of at most 255 bytes each."""
    strings = " ".join(f'"{chunk}"' for chunk in split_txt(value))
    return f"{name}. IN TXT ( {strings} )"


def write_private_key(path: Path, pem: bytes, force: bool) -> None:
    """Create (or with ``force`` replace) ``path`` with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file replaced with --force keeps its old mode otherwise
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def key_path(domain: str, selector: str, key_dir: Path, key_type: Literal["rsa", "ed25519"] = "rsa") -> Path:
    """Where :func:`generate_key` writes: ``<key_dir>/<domain>.<selector>.<type>.pem``."""
    return Path(key_dir) / f"{domain}.{selector}.{key_type}.pem"


def generate_key(
    domain: str,
    selector: str,
    key_dir: Path,
    key_type: Literal["rsa", "ed25519"] = "rsa",
    *,
    force: bool = False,
) -> tuple[Path, str]:
    """Generate a private key (RSA-2048 or Ed25519) into :func:`key_path` with mode 0600.

    Returns ``(path, dns_record)``: the key file and the zone-file TXT record to publish at
    ``selector._domainkey.domain``. ``ValueError`` for a bad domain or selector,
    ``FileExistsError`` when the file exists and ``force`` is false, ``OSError`` when it
    cannot be written.
    """
    domain = domain.lower().rstrip(".")
    if not is_dns_name(domain) or "." not in domain:
        raise ValueError(f"{domain!r} is not a domain name")
    if not is_dns_name(selector):
        raise ValueError(f"{selector!r} is not a valid selector (DNS labels)")
    path = key_path(domain, selector, key_dir, key_type)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists")
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        fmt = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        fmt = serialization.PrivateFormat.PKCS8
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    write_private_key(path, pem, force)
    return path, zone_record(f"{selector}._domainkey.{domain}", dns_txt_value(key))
