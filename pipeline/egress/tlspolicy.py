"""Outbound TLS for direct delivery: which level a connection needs, STARTTLS at that level, and
the outcome every log line and event carries.

Levels as Postfix's ``smtp_tls_policy_maps`` names them: ``none`` (no STARTTLS), ``may``
(opportunistic: STARTTLS when offered, no certificate check, plaintext if the handshake fails:
the default, as before), ``encrypt`` (TLS required, certificate not checked), ``verify`` (TLS
required, certificate chain and MX host name verified), and ``dane`` (RFC 7672: the server's
certificate must match a DNSSEC-validated TLSA record). Where a level comes from is kept
(``policy`` for the config table, ``mta-sts``, ``dane``) because the outcome names it:
``none``, ``TLSv1.3 unverified``, ``TLSv1.3 verified (mta-sts)``, ``TLSv1.3 verified (dane)``.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pipeline.config import TlsLevel, TlsPolicySection

TLSA = tuple[int, int, int, bytes]  # usage, selector, matching type, data

LEVEL_RANK = {"none": 0, "may": 1, "encrypt": 2, "verify": 3, "dane": 3}


@dataclass(frozen=True)
class Requirement:
    """What one connection to one MX host must achieve."""

    level: str  # none | may | encrypt | verify | dane
    source: str = "default"  # default | policy | mta-sts | dane
    tlsa: tuple[TLSA, ...] = ()
    report_only: bool = False  # MTA-STS "testing": deliver anyway, report what would have failed

    @property
    def key(self) -> str:
        """Connections opened for equal keys satisfy each other (pool reuse)."""
        return f"{self.level}:{self.source}:{hash(self.tlsa)}:{self.report_only}"


@dataclass
class TlsResult:
    """What a connection achieved: ``outcome`` is the text for logs and events."""

    version: str | None = None  # "TLSv1.3", None for plaintext
    verified: bool = False
    source: str = ""
    problems: list[str] = field(default_factory=list)  # reported, not fatal (MTA-STS testing)

    @property
    def outcome(self) -> str:
        if self.version is None:
            text = "none"
        elif self.verified:
            text = f"{self.version} verified ({self.source})" if self.source else f"{self.version} verified"
        else:
            text = f"{self.version} unverified"
        if self.problems:
            text += f" [{self.source} testing: {'; '.join(self.problems)}]"
        return text


class TlsPolicyFailed(Exception):
    """The connection cannot meet the required level: the copy is deferred (4.7.5), never sent in clear."""


def configured_level(settings: TlsPolicySection, domain: str, egress_tls: str) -> tuple[TlsLevel, str] | None:
    """The level the config names for ``domain`` (exact, else the nearest ``.parent`` entry)."""
    if not settings.domains:
        return None
    table = {k.lower().rstrip("."): level for k, level in settings.domains.items()}  # as written, any case
    domain = domain.lower().rstrip(".")
    if domain in table:
        return table[domain], "policy"
    labels = domain.split(".")
    for i in range(1, len(labels)):
        parent = "." + ".".join(labels[i:])
        if parent in table:
            return table[parent], "policy"
    return None


def default_level(settings: TlsPolicySection, egress_tls: str) -> TlsLevel:
    """No policy for the destination: ``[tls_policy] default``, else what ``[egress] tls`` always meant."""
    if settings.default is not None:
        return settings.default
    return "none" if egress_tls == "none" else "may"


@lru_cache(maxsize=8)
def client_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """One context per (verify, CA) pair, shared by every connection (loading CAs is the slow part)."""
    if verify:
        ctx = ssl.create_default_context(cafile=ca_file)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if verify:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def peer_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The DER certificates the server presented, leaf first (Python 3.11 keeps this call private)."""
    raw = getattr(ssl_object, "_sslobj", None)
    chain = getattr(raw, "get_unverified_chain", None)
    if chain is not None:
        certs = chain() or []
        der = getattr(ssl._ssl, "ENCODING_DER", 2)  # type: ignore[attr-defined]
        return [c.public_bytes(der) for c in certs]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 1:
        return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return cert.public_bytes(Encoding.DER)


def _matches(cert: x509.Certificate, selector: int, mtype: int, data: bytes) -> bool:
    blob = _selected(cert, selector)
    if mtype == 1:
        blob = hashlib.sha256(blob).digest()
    elif mtype == 2:
        blob = hashlib.sha512(blob).digest()
    return blob == data


def usable_tlsa(records: list[TLSA] | tuple[TLSA, ...]) -> tuple[TLSA, ...]:
    """RFC 7672 3.1.3: SMTP uses DANE-TA(2) and DANE-EE(3) only; PKIX-TA/EE(0/1) are unusable."""
    return tuple(r for r in records if r[0] in (2, 3) and r[1] in (0, 1) and r[2] in (0, 1, 2))


def dane_check(chain_der: list[bytes], records: tuple[TLSA, ...], host: str) -> str | None:
    """``None`` when the presented chain matches a TLSA record, else why not.

    DANE-EE(3): the leaf's certificate or key matches; no name or expiry check (RFC 7672 3.1.1).
    DANE-TA(2): a presented certificate matches and is the trust anchor of a chain that verifies
    to the leaf, whose name must match the MX host (RFC 7672 3.1.2).
    """
    if not chain_der:
        return "the server presented no certificate"
    certs = [x509.load_der_x509_certificate(der) for der in chain_der]
    leaf = certs[0]
    for usage, selector, mtype, data in records:
        if usage == 3 and _matches(leaf, selector, mtype, data):
            return None
    for usage, selector, mtype, data in records:
        if usage != 2:
            continue
        for anchor in certs:
            if not _matches(anchor, selector, mtype, data):
                continue
            if anchor is leaf:
                continue
            try:
                verifier = PolicyBuilder().store(Store([anchor])).build_server_verifier(x509.DNSName(host))
                verifier.verify(leaf, [c for c in certs[1:] if c is not anchor])
                return None
            except (VerificationError, ValueError) as exc:
                return f"TLSA 2 {selector} {mtype} matched a certificate, but the chain does not verify: {exc}"
    return f"no certificate matches the TLSA records of {host}"


def tls_version(ssl_object: ssl.SSLObject | None) -> str | None:
    return ssl_object.version() if ssl_object is not None else None
