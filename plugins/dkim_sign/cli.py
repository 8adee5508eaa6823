"""``smtpgate dkim keygen``: make a DKIM key pair and print the DNS record to publish.

Brought by the plugin through the ``smtpgate_cli_commands`` hook (the core CLI does not import
the plugin). The work is :func:`plugins.dkim_sign.keys.generate_key`; this is its command line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click

from pipeline import PluginEnv
from plugins.dkim_sign.keys import generate_key, is_dns_name, key_path


def dkim_commands(load_env: Callable[[str | None], PluginEnv], config_option: Callable[[Any], Any]) -> click.Group:
    """The ``smtpgate dkim`` group; ``load_env`` gives the data directory of ``--config``."""

    @click.group()
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
        domain: str,
        selector: str,
        key_type: Literal["rsa", "ed25519"],
        out_dir: Path | None,
        force: bool,
        config_path: str | None,
    ) -> None:
        """Generate a private key (RSA 2048 or Ed25519) and print its DNS TXT record."""
        domain = domain.lower().rstrip(".")
        if not is_dns_name(domain) or "." not in domain:
            raise click.BadParameter(f"{domain!r} is not a domain name", param_hint="--domain")
        if not is_dns_name(selector):
            raise click.BadParameter(f"{selector!r} is not a valid selector (DNS labels)", param_hint="--selector")
        if out_dir is None:
            out_dir = load_env(config_path).data_dir / "dkim"
        try:
            path, record = generate_key(domain, selector, out_dir, key_type, force=force)
        except FileExistsError as exc:
            click.echo(f"smtpgate: {exc}; use --force to replace it", err=True)
            sys.exit(1)
        except OSError as exc:
            click.echo(f"smtpgate: cannot write {key_path(domain, selector, out_dir, key_type)}: {exc.strerror}", err=True)
            sys.exit(1)
        file_key = "key_file" if key_type == "rsa" else "ed25519_key_file"
        selector_key = "selector" if key_type == "rsa" else "ed25519_selector"
        click.echo(f"; private key written to {path} (mode 0600)", err=True)
        click.echo(record)
        click.echo(
            f'; config:\n; [plugins.dkim_sign.domains."{domain}"]\n; {selector_key} = "{selector}"\n'
            f'; {file_key} = "{path.resolve()}"',
            err=True,
        )

    return dkim
