"""dkim_sign: DKIM-sign each recipient copy as the very last step, then seal it.

Keys are configured per domain and chosen by the ``From`` domain (DMARC alignment; a parent
domain's key also aligns under relaxed alignment), falling back to ``default_domain``
(Sendsay's rule). Every copy gets an RSA signature (rsa-sha256); a domain may add an Ed25519
one (RFC 8463) under its own selector. Canonicalisation is relaxed/relaxed.

dkimpy does the canonicalisation, header selection and folding. Its RSA arithmetic is pure
Python (about 6-15 ms per 2048-bit signature); with ``rsa_engine = "openssl"`` (the default)
only the final RSA step is done by OpenSSL through ``cryptography``, which gives byte-for-byte
the same PKCS#1 v1.5 signature. A start-up self-test signs a message with every configured
key and verifies it with stock dkimpy, so a dkimpy upgrade that changed its internals would
stop the gateway at start rather than send bad signatures.

With the OpenSSL engine the relaxed body canonicalisation and the header/body split are done by
:func:`relaxed_body` and :meth:`_OpenSSLDKIM.set_message` (byte-identical to dkimpy's, proven by
tests over every sample and corpus message and random input): dkimpy's versions run a regex over
every single space of the body and split the whole message into lines, about a fifth of the
worker's time per copy.

The package: :mod:`.keys` (key files, DNS records, :func:`generate_key`), :mod:`.signer` (the
dkimpy-based signer), :mod:`.plugin` (the plugin) and :mod:`.cli` (``smtpgate dkim keygen``,
registered through the ``smtpgate_cli_commands`` hook).
"""

from plugins.dkim_sign.keys import (
    SigningKey,
    dns_txt_value,
    generate_key,
    is_dns_name,
    key_path,
    load_ed25519_key,
    load_rsa_key,
    split_txt,
    zone_record,
)
from plugins.dkim_sign.plugin import DkimSign, DomainKeyConfig
from plugins.dkim_sign.signer import (
    _OpenSSLDKIM,
    author_domain,
    relaxed_body,
    self_test,
    sign_ed25519,
    sign_rsa,
    signed_headers,
)

__all__ = [
    "DkimSign",
    "DomainKeyConfig",
    "SigningKey",
    "_OpenSSLDKIM",
    "author_domain",
    "dns_txt_value",
    "generate_key",
    "is_dns_name",
    "key_path",
    "load_ed25519_key",
    "load_rsa_key",
    "relaxed_body",
    "self_test",
    "sign_ed25519",
    "sign_rsa",
    "signed_headers",
    "split_txt",
    "zone_record",
]
