"""``smtpgate dkim keygen``: make a DKIM key pair and print the DNS record to publish.

The private key is written with mode 0600 before any byte of it reaches the disk (``os.open``
with the mode, not a chmod afterwards), and an existing key is never overwritten without
``--force``: replacing a published key breaks every signature in flight.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pipeline.app.cli import config_option, get_config, main
from plugins.dkim_sign import dns_txt_value, is_dns_name

TXT_CHUNK = 255  # one DNS character-string holds at most 255 octets (RFC 1035 section 3.3)


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


@main.group()
def dkim() -> None:
    """DKIM keys for the dkim_sign plugin."""


@dkim.command()
@click.option("--domain", required=True, help="Signing domain (d=), e.g. example.com.")
@click.option("--selector", required=True, help="Selector (s=), e.g. s1; the record goes at S._domainkey.D.")
@click.option("--type", "key_type", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the private key (default: <data_dir>/dkim).",
)
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@config_option
def keygen(
    domain: str, selector: str, key_type: str, out_dir: Path | None, force: bool, config_path: str | None
) -> None:
    """Generate a private key (RSA 2048 or Ed25519) and print its DNS TXT record."""
    domain = domain.lower().rstrip(".")
    if not is_dns_name(domain) or "." not in domain:
        raise click.BadParameter(f"{domain!r} is not a domain name", param_hint="--domain")
    if not is_dns_name(selector):
        raise click.BadParameter(
            f"{selector!r} is not a valid selector (DNS labels)", param_hint="--selector"
        )
    if out_dir is None:
        out_dir = get_config(config_path).data_dir / "dkim"
    path = out_dir / f"{domain}.{selector}.{key_type}.pem"
    if path.exists() and not force:
        click.echo(f"smtpgate: {path} already exists; use --force to replace it", err=True)
        sys.exit(1)
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        fmt = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        fmt = serialization.PrivateFormat.PKCS8
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    try:
        write_private_key(path, pem, force)
    except OSError as exc:
        click.echo(f"smtpgate: cannot write {path}: {exc.strerror}", err=True)
        sys.exit(1)
    file_key = "key_file" if key_type == "rsa" else "ed25519_key_file"
    selector_key = "selector" if key_type == "rsa" else "ed25519_selector"
    click.echo(f"; private key written to {path} (mode 0600)", err=True)
    click.echo(zone_record(f"{selector}._domainkey.{domain}", dns_txt_value(key)))
    click.echo(
        f'; config:\n; [plugins.dkim_sign.domains."{domain}"]\n; {selector_key} = "{selector}"\n'
        f'; {file_key} = "{path.resolve()}"',
        err=True,
    )
