"""dkim_sign: DKIM-sign each recipient copy as the very last step, then seal it.

Keys are configured per domain and chosen by the ``From`` domain (DMARC alignment; a parent
domain's key also aligns under relaxed alignment), falling back to ``default_domain``
(Sendsay's rule). Every copy gets an RSA signature (rsa-sha256); a domain may add an Ed25519
one (RFC 8463) under its own selector. Canonicalisation is relaxed/relaxed.

With ``rsa_engine = "openssl"`` (the default) the signature is made by :func:`dkim_signature`:
the same bytes as dkimpy's ``DKIM.sign`` (tests compare them for every sample and corpus message,
both canonicalisations, RSA and Ed25519) at about the cost of the OpenSSL key operation plus
0.5 ms for a 55 KB message, against 10 ms for dkimpy's pure-Python RSA. A start-up self-test
signs a message with every configured key and verifies it with stock dkimpy, so a dkimpy upgrade
that changed its output would stop the gateway at start rather than send bad signatures.

The package: :mod:`.keys` (key files, DNS records, :func:`generate_key`), :mod:`.signer` (the
signer), :mod:`.plugin` (the plugin) and :mod:`.cli` (``smtpgate dkim keygen``,
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
    author_domain,
    dkim_signature,
    relaxed_body,
    self_test,
    sign_ed25519,
    sign_rsa,
    signed_headers,
    simple_body,
    split_message,
)

__all__ = [
    "DkimSign",
    "DomainKeyConfig",
    "SigningKey",
    "author_domain",
    "dkim_signature",
    "dns_txt_value",
    "generate_key",
    "is_dns_name",
    "key_path",
    "load_ed25519_key",
    "load_rsa_key",
    "relaxed_body",
    "self_test",
    "simple_body",
    "sign_ed25519",
    "sign_rsa",
    "signed_headers",
    "split_message",
    "split_txt",
    "zone_record",
]
