"""The DKIM signer: dkimpy's canonicalisation, header selection and folding, with the RSA step
(and, for CRLF-only messages, the body canonicalisation) done faster but byte-identically.

:class:`_OpenSSLDKIM` mirrors dkimpy internals (``dkimpy`` 1.1; the dependency has an upper
bound for that reason), and :func:`self_test` signs and verifies with stock dkimpy at start-up,
so a dkimpy change stops the gateway rather than sending bad signatures.
"""

from __future__ import annotations

import base64
import email.headerregistry
import email.policy
import functools
import re
import time
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from plugins.dkim_sign.keys import SigningKey, dns_txt_value

CANONICALIZE = (b"relaxed", b"relaxed")
SIGNED = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type")
SIGNED_WHEN_PRESENT = (
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
    b"x-campaign-id",
    b"x-letter-id",
)
OVERSIGNED = (b"from", b"subject", b"to")
"""Listed once more than they occur, so a field added in transit breaks the signature."""


_WSP_TO_COMPRESS = re.compile(rb"(?:\t| [\t ])[\t ]*")
"""A run of spaces and tabs that is not already one single space (the only runs relaxed body
canonicalisation changes). Matches start only at a run's first byte and take the whole run."""


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 relaxed body canonicalisation, byte-identical to dkimpy's ``Relaxed``.

    dkimpy strips whitespace before each CRLF, then turns every ``[\\t ]+`` run into one space
    (its regex matches, and replaces, every lone space too). Here runs are compressed first, and
    only those that are not already a single space are touched; a run that ended a line is then
    a single space before CRLF, removed by a plain ``replace``. Same result, a fraction of the work.
    """
    body = _WSP_TO_COMPRESS.sub(b" ", body).replace(b" \r\n", b"\r\n")
    return dkim.canonicalization.correct_empty_body(dkim.canonicalization.strip_trailing_lines(body))


class _OpenSSLDKIM(dkim.DKIM):
    """dkimpy's signer with the RSA step done by OpenSSL.

    ``gen_header`` is dkimpy's own (``dkim.DomainSigner.gen_header``, dkimpy 1.1) except for the
    line computing the signature: the header hashing and folding are dkimpy's public helpers.
    ``sign`` is dkimpy's for what this plugin asks (rsa-sha256, relaxed/relaxed, no ``i=``, no
    ``l=``) with :func:`relaxed_body`; anything else goes to dkimpy's own ``sign``.
    """

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey) -> None:
        super().__init__(message, signature_algorithm=b"rsa-sha256", linesep=b"\r\n")
        self._key = key

    def set_message(self, message: bytes) -> None:
        """dkimpy's, without splitting the body into lines when the message is CRLF-only.

        ``dkim.rfc822_parse`` splits on ``\\r?\\n`` and joins the body back with CRLF: for a
        message whose every LF is part of a CRLF (all that :class:`pipeline.contract.message.Message`
        produces) that body is simply the bytes after the first empty line.
        """
        sep = message.find(b"\r\n\r\n") if message else -1
        if sep < 0 or message.startswith(b"\r\n") or message.count(b"\n") != message.count(b"\r\n"):
            super().set_message(message)
            return
        super().set_message(message[: sep + 4])  # the header block, parsed by dkimpy itself
        self.body = message[sep + 4 :]

    def sign(  # type: ignore[override]
        self,
        selector: bytes,
        domain: bytes,
        privkey: bytes,
        signature_algorithm: bytes | None = None,
        identity: bytes | None = None,
        canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple"),
        include_headers: Any = None,
        length: bool = False,
    ) -> bytes:
        if (
            canonicalize != CANONICALIZE
            or identity is not None
            or length
            or include_headers is None
            or signature_algorithm not in (None, b"rsa-sha256")
        ):
            return bytes(
                super().sign(selector, domain, privkey, signature_algorithm, identity, canonicalize,
                             include_headers, length)
            )
        canon_policy = dkim.CanonicalizationPolicy.from_c_value(b"/".join(canonicalize))
        include = tuple(bytes(x, "utf-8") if isinstance(x, str) else x for x in include_headers)
        include = tuple(x.lower() for x in include)
        self.include_headers = include
        if b"from" not in include:
            raise dkim.ParameterError("The From header field MUST be signed")
        for x in set(include).intersection(self.should_not_sign):
            raise dkim.ParameterError(f"The {x!r} header field SHOULD NOT be signed")
        self.hasher = dkim.HASH_ALGORITHMS[self.signature_algorithm]
        h = self.hasher()
        h.update(relaxed_body(self.body))
        bodyhash = base64.b64encode(h.digest())
        sigfields = [
            (b"v", b"1"),
            (b"a", self.signature_algorithm),
            (b"c", canon_policy.to_c_value()),
            (b"d", domain),
            (b"i", b"@" + domain),
            (b"q", b"dns/txt"),
            (b"s", selector),
            (b"t", str(int(time.time())).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", bodyhash),
            (b"b", b"0" * 60),  # as dkimpy: forces b= onto its own line when folding
        ]
        res = self.gen_header(sigfields, include, canon_policy, b"DKIM-Signature", None)
        self.domain = domain
        self.selector = selector
        self.signature_fields = dict(sigfields)
        return b"DKIM-Signature: " + res

    def gen_header(
        self,
        fields: list[tuple[bytes, bytes]],
        include_headers: Any,
        canon_policy: Any,
        header_name: bytes,
        pk: Any,
        standardize: bool = False,
    ) -> bytes:
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        h = self.hasher()
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(
            h, canon_policy, headers, include_headers, (header_name, b" " + header_value), dict(fields)
        )
        signature = self._key.sign(h.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        fields = [(tag, base64.b64encode(signature) if tag == b"b" else value) for tag, value in fields]
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return dkim.fold(header_value, namelen=len(header_name), linesep=self.linesep)


def sign_rsa(data: bytes, key: SigningKey, include: list[bytes], engine: str = "openssl") -> bytes:
    """An rsa-sha256 ``DKIM-Signature`` field (CRLF-terminated) for ``data``."""
    signer = _OpenSSLDKIM(data, key.rsa) if engine == "openssl" else dkim.DKIM(data, linesep=b"\r\n")
    return signer.sign(
        key.selector.encode(),
        key.domain.encode(),
        key.rsa_pem,
        canonicalize=CANONICALIZE,
        include_headers=include,
    )


def sign_ed25519(data: bytes, key: SigningKey, include: list[bytes]) -> bytes:
    """An ed25519-sha256 ``DKIM-Signature`` field (RFC 8463) for ``data``."""
    assert key.ed25519_selector is not None
    signer = dkim.DKIM(data, signature_algorithm=b"ed25519-sha256", linesep=b"\r\n")
    return signer.sign(
        key.ed25519_selector.encode(),
        key.domain.encode(),
        key.ed25519_seed,
        canonicalize=CANONICALIZE,
        include_headers=include,
    )


def signed_headers(header_names: list[str]) -> list[bytes]:
    """The ``h=`` list: every occurrence of the fields we sign, plus one more of the oversigned ones."""
    counts: dict[bytes, int] = {}
    for name in header_names:
        key = name.lower().encode("ascii", "replace")
        counts[key] = counts.get(key, 0) + 1
    include: list[bytes] = []
    for field in SIGNED:
        include += [field] * max(counts.get(field, 0), 1)
    for field in SIGNED_WHEN_PRESENT:
        include += [field] * counts.get(field, 0)
    include += OVERSIGNED
    return include


def author_domain(headers: list[Any]) -> str | None:
    """The domain of the (first) ``From`` address, or ``None`` when there is none to parse."""
    raw = next((h.raw_value for h in headers if h.name.lower() == "from"), None)
    if raw is None:
        return None
    return _from_domain(raw)


@functools.lru_cache(maxsize=256)
def _from_domain(raw: str) -> str | None:
    """A pure function of the field's text, cached: the stdlib address parser costs about 1 ms,
    and every copy of a message (and every message of a campaign) has the same ``From``."""
    try:
        parsed = email.policy.default.header_factory("From", raw)
    except Exception:  # noqa: BLE001 - the stdlib parser crashes on some garbage: no usable domain
        return None
    if not isinstance(parsed, email.headerregistry.AddressHeader):
        return None
    for address in parsed.addresses:
        if address.domain:
            return address.domain.lower()
    return None


_SELF_TEST = (
    b"From: self-test@example.invalid\r\nTo: you@example.invalid\r\nSubject: self-test\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-Id: <self-test@example.invalid>\r\n\r\nbody\r\n"
)


def self_test(key: SigningKey, engine: str) -> None:
    """Sign a small message with ``key`` and verify it with stock dkimpy (a start-up check)."""
    include = signed_headers(["From", "To", "Subject", "Date", "Message-Id"])
    records = {f"{key.selector}._domainkey.{key.domain}.": dns_txt_value(key.rsa)}
    checks = [sign_rsa(_SELF_TEST, key, include, engine)]
    if key.ed25519 is not None:
        records[f"{key.ed25519_selector}._domainkey.{key.domain}."] = dns_txt_value(key.ed25519)
        checks.append(sign_ed25519(_SELF_TEST, key, include))

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode(), "").encode()

    for sig in checks:
        if not dkim.verify(sig + _SELF_TEST, dnsfunc=dnsfunc):
            raise ValueError(f'domains."{key.domain}": DKIM self-test failed: a signature did not verify')
