"""``smtpgate api-tokens add|list|revoke``: bearer tokens for the management API (docs/api.md).

As with ``credentials add``, the new token is printed once, alone on standard output (so
``TOKEN=$(smtpgate api-tokens add ci)`` works), with the explanation on standard error; only its
hash is stored, in ``credentials.db`` next to the credentials (or ``[storage] url``'s PostgreSQL,
shared by every node). A running server, any node of it, sees a new or revoked token at its next
request.
"""

from __future__ import annotations

import json
import sys
import time

import click

from pipeline.accounts.api_tokens import ApiTokenError, ApiTokenStore, open_api_token_store
from pipeline.accounts.store import has_credential_store, open_credential_store
from pipeline.app.cli import config_option, get_config, main
from pipeline.config import Config


def _fail(message: str) -> None:
    click.echo(f"smtpgate: {message}", err=True)
    sys.exit(1)


def _tokens(config: Config) -> ApiTokenStore:
    return open_api_token_store(config.storage.url, config.data_dir)


def _credential_exists(config: Config, name: str) -> bool:
    if any(c.name == name for c in config.credentials):
        return True
    if not has_credential_store(config):
        return False
    store = open_credential_store(config)
    try:
        return any(r["name"] == name for r in store.list())
    finally:
        store.close()


@main.group("api-tokens")
def api_tokens() -> None:
    """Manage bearer tokens for the management API (/api/v1)."""


@api_tokens.command("add")
@click.argument("name")
@click.option("--credential", metavar="CRED", help="Scope the token to this credential's messages (a tenant).")
@config_option
def add(name: str, credential: str | None, config_path: str | None) -> None:
    """Add a token; it is printed once. Without --credential it is an administrator's."""
    config = get_config(config_path)
    if credential is not None and not _credential_exists(config, credential):
        _fail(f"--credential {credential!r}: no such credential (see `smtpgate credentials list`)")
    store = _tokens(config)
    try:
        token = store.add(name, credential)
    except ApiTokenError as exc:
        _fail(str(exc))
    finally:
        store.close()
    scope = f"credential {credential!r} only" if credential else "every credential (administrator)"
    click.echo(f"Added API token {name!r} for {scope}. It is shown only now; send it as "
               "'Authorization: Bearer <token>'.", err=True)
    click.echo(token)


@api_tokens.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(config_path: str | None, as_json: bool) -> None:
    """List tokens (never the tokens themselves)."""
    store = _tokens(get_config(config_path))
    try:
        rows = store.list()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no API tokens (add one with: smtpgate api-tokens add NAME)")
        return
    click.echo(f"{'NAME':<24} {'ID':<14} {'SCOPE':<24} CREATED")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created_at"]))
        click.echo(f"{r['name']:<24} {r['id']:<14} {r['credential'] or '(admin)':<24} {created}")


@api_tokens.command()
@click.argument("name")
@config_option
def revoke(name: str, config_path: str | None) -> None:
    """Delete a token (by name or id); it stops working at once."""
    store = _tokens(get_config(config_path))
    try:
        store.revoke(name)
    except ApiTokenError as exc:
        _fail(str(exc))
    finally:
        store.close()
    click.echo(f"revoked API token {name!r}", err=True)
