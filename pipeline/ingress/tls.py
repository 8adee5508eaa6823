"""TLS for the listeners: the configured certificate, or a generated self-signed one.

With no ``[tls] cert_file`` the gateway still starts (the README's one-command start): it makes a
self-signed certificate in ``<data_dir>/tls/`` once, reuses it on later starts, and logs a warning,
because clients that verify certificates will refuse it.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from pipeline.config import Config, ConfigError

log = logging.getLogger("smtpgate.ingress.tls")


def generate_self_signed(cert_file: Path, key_file: Path, hostname: str) -> None:
    """Write a self-signed ECDSA certificate for ``hostname``, localhost and 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if hostname and hostname != "localhost":
        try:
            sans.insert(0, x509.DNSName(hostname))
        except ValueError:
            pass
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def server_context(config: Config) -> ssl.SSLContext:
    """The server-side TLS context for every listener (TLS 1.2 or newer)."""
    cert_file, key_file = config.tls.cert_file, config.tls.key_file
    if (cert_file is None) != (key_file is None):
        raise ConfigError(f"{config.source}: tls: set both cert_file and key_file, or neither")
    if cert_file is None or key_file is None:
        cert_file = config.data_dir / "tls" / "selfsigned-cert.pem"
        key_file = config.data_dir / "tls" / "selfsigned-key.pem"
        if not (cert_file.exists() and key_file.exists()):
            generate_self_signed(cert_file, key_file, config.gateway.hostname)
        log.warning(
            "no [tls] cert_file configured: using the self-signed certificate %s "
            "(clients that verify certificates will refuse it)", cert_file,
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.source}: tls: cannot load {cert_file} / {key_file}: {exc}") from None
    return ctx
