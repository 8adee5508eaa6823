"""``smtpgate init``: a new instance that signs from its first message.

Writes a commented ``smtpgate.toml`` (the embedded defaults for what it does not ask about, so
``smtpgate serve`` runs at once; production settings as commented alternatives), a DKIM key and
the tracking key in the data directory, a first API key credential, and the DNS records to
publish (also saved as ``<data_dir>/dns-records.zone``). The API key is the only thing on stdout
(``KEY=$(smtpgate init ...)`` works); everything else goes to stderr.
"""

from __future__ import annotations

import base64
import datetime
import os
import secrets
import socket
import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.accounts.credentials import CredentialError, CredentialStore
from pipeline.app.cli import main


def dns_txt_value(key: rsa.RSAPrivateKey) -> str:
    """The DKIM key record (RFC 6376 3.6.1). The core may not import the dkim_sign plugin (layers),
    so init makes its RSA key here; ``smtpgate dkim keygen`` (the plugin's command) makes others."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def zone_record(name: str, value: str) -> str:
    """A zone-file TXT record, the value cut into DNS character-strings of at most 255 octets."""
    return f"{name}. IN TXT ( {' '.join(f'{chr(34)}{value[i:i + 255]}{chr(34)}' for i in range(0, len(value), 255))} )"


def write_private_key(path: Path, pem: bytes) -> None:
    """Create ``path`` with mode 0600 before any byte of the key reaches the disk."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


TEMPLATE = """\
# smtpgate.toml, written by `smtpgate init` on {today}.
# Every key not written here keeps its default (docs/configuration.md); any key can also be set
# from the environment as SMTPGATE_<SECTION>__<KEY>. Check with: smtpgate check-config

[gateway]
hostname = "{hostname}"        # greeting, Received headers and Message-IDs: this server's public name
data_dir = "smtpgate-data"      # relative to this file: spool, events, keys, credentials
# log_format = "json"           # one JSON object per line, for a log shipper

# SMTP listeners: the defaults are loopback only (127.0.0.1:2525 STARTTLS, 127.0.0.1:4650 TLS).
# In production, listen publicly on the submission ports with a real certificate:
# [[listeners]]
# name = "submission"
# address = "0.0.0.0"
# port = 587
# tls = "starttls"
# [[listeners]]
# name = "smtps"
# address = "0.0.0.0"
# port = 465
# tls = "implicit"
# [tls]
# cert_file = "/etc/letsencrypt/live/{hostname}/fullchain.pem"
# key_file = "/etc/letsencrypt/live/{hostname}/privkey.pem"

# Where mail goes: the default writes every copy into a maildir, so nothing leaves this machine
# until you choose. In production, deliver through a smarthost ...
[egress]
type = "maildir"
# type = "smtp"
# host = "smtp.relay.example.net"
# port = 587
# username = "smtpgate"
# password = "env:RELAY_PASSWORD"
# ... or directly to each recipient domain's MX (needs outbound port 25 and a PTR record):
# type = "mx"

[tracking]
bounce_domain = "{bounce_domain}"   # VERP bounces come back here (publish its MX record)
# base_url = "https://t.{domain}"   # public URL of the click/open service (default http://127.0.0.1:8080)
# The HMAC key (id k1) is in smtpgate-data/tracking.key, made by init.

[plugins.dkim_sign]
default_domain = "{domain}"         # signs mail from other domains with this one too

[plugins.dkim_sign.domains."{domain}"]
selector = "{selector}"
key_file = "{key_file}"
"""


def dns_records(domain: str, hostname: str, selector: str, dkim_txt: str, bounce_domain: str) -> list[str]:
    """The zone-file lines to publish: DKIM, SPF, DMARC, the bounce domain's MX; MTA-STS/TLS-RPT optional."""
    return [
        f"; DKIM key for d={domain} s={selector} (required: mail is signed with it)",
        zone_record(f"{selector}._domainkey.{domain}", dkim_txt),
        f"; SPF: this gateway may send for {domain}",
        f'{domain}. IN TXT "v=spf1 a:{hostname} ~all"',
        "; DMARC: start with p=none and read the reports, then move to quarantine/reject",
        f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@{domain}"',
        "; bounce domain: DSNs to VERP addresses come back to this gateway",
        f"{bounce_domain}. IN MX 10 {hostname}.",
        f"; {hostname} needs an A/AAAA record, and its address a PTR record back to {hostname}",
        "; optional: MTA-STS (serve https://mta-sts.DOMAIN/.well-known/mta-sts.txt) and TLS reporting",
        f'; _mta-sts.{domain}. IN TXT "v=STSv1; id={datetime.date.today():%Y%m%d}01"',
        f'; _smtp._tls.{domain}. IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@{domain}"',
    ]


def _fail(message: str) -> None:
    click.echo(f"smtpgate: {message}", err=True)
    sys.exit(1)


@main.command()
@click.option("--domain", default="example.com", show_default=True, help="Your sending domain (DKIM d=).")
@click.option("--hostname", default=None, help="This server's public name (default: this host's FQDN).")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("smtpgate.toml"), show_default=True, help="Where to write the config.")
@click.option("--credential", "credential_name", default="app", show_default=True, help="Name of the first API key.")
@click.option("--force", is_flag=True, help="Replace an existing config file (keys are never replaced).")
def init(domain: str, hostname: str | None, config_path: Path, credential_name: str, force: bool) -> None:
    """Create an instance: config, DKIM and tracking keys, a first API key, and the DNS records to publish."""
    domain = domain.lower().rstrip(".")
    if "." not in domain or not all(part.replace("-", "").isalnum() for part in domain.split(".")):
        raise click.BadParameter(f"{domain!r} is not a domain name", param_hint="--domain")
    hostname = (hostname or socket.getfqdn()).lower().rstrip(".")
    if config_path.exists() and not force:
        _fail(f"{config_path} already exists; use --force to replace it (or --config another path)")
    data_dir = config_path.absolute().parent / "smtpgate-data"
    selector = f"s{datetime.date.today():%Y%m}"
    key_file = data_dir / "dkim" / f"{domain}.{selector}.rsa.pem"
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if key_file.exists():  # a key that may already be published is reused, never replaced
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            assert isinstance(key, rsa.RSAPrivateKey)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
            write_private_key(key_file, pem)
        tracking_key = data_dir / "tracking.key"
        if not tracking_key.exists():
            fd = os.open(tracking_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        bounce_domain = f"bounces.{domain}"
        text = TEMPLATE.format(today=datetime.date.today(), hostname=hostname, domain=domain, selector=selector,
                               key_file=key_file, bounce_domain=bounce_domain)
        config_path.write_text(text)
        records = dns_records(domain, hostname, selector, dns_txt_value(key), bounce_domain)
        (data_dir / "dns-records.zone").write_text("\n".join(records) + "\n")
    except OSError as exc:
        _fail(f"cannot write {exc.filename or config_path}: {exc.strerror or exc}")
    store = CredentialStore(data_dir / "credentials.db")
    try:
        api_key = store.add(credential_name, "apikey", options={})
    except CredentialError as exc:
        api_key = None
        click.echo(f"smtpgate: first credential not created: {exc}", err=True)
    finally:
        store.close()
    say = lambda line="": click.echo(line, err=True)  # noqa: E731
    say(f"wrote {config_path} (data dir {data_dir})")
    say(f"DKIM key: {key_file} (selector {selector}); tracking key: {data_dir / 'tracking.key'}")
    if hostname in ("localhost", "localhost.localdomain") or "." not in hostname:
        say(f"warning: hostname {hostname!r} is not a public name; rerun with --hostname mail.{domain}")
    say("")
    say(f"Publish these DNS records (also in {data_dir / 'dns-records.zone'}):")
    for line in records:
        say(f"  {line}")
    say("")
    if api_key:
        say(f"API key of credential {credential_name!r}, shown only now (SMTP AUTH user 'apikey', this key as "
            "password):")
        click.echo(api_key)
    say("")
    say(f"Start it with: smtpgate serve{'' if config_path == Path('smtpgate.toml') else f' --config {config_path}'}")
