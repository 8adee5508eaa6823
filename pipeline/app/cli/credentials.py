"""``smtpgate credentials add|list|disable|enable|remove|hash``: the credential store in the data dir.

Secrets are shown once, when generated, and stored only as salted scrypt hashes. Credentials in
the config file (``[[credentials]]``) are listed too but are changed by editing the file.
A running server sees changes at the next connection or AUTH (no restart).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pipeline.accounts.secrets import hash_secret
from pipeline.accounts.store import CredentialError, CredentialStore, open_credential_store
from pipeline.app.cli import config_option, get_config, main
from pipeline.chain.features import FeatureError, FeatureRegistry
from pipeline.chain.loader import feature_registry
from pipeline.config import Config


def _fail(message: str) -> None:
    click.echo(f"smtpgate: {message}", err=True)
    sys.exit(1)


def _store(config: Config) -> CredentialStore:
    return open_credential_store(config)


def _in_config(config: Config, name: str) -> bool:
    return any(c.name == name for c in config.credentials)


def _parse_features(items: tuple[str, ...], switches: FeatureRegistry) -> dict[str, bool]:
    """``NAME=on|off`` pairs; NAME must be a switch of a plugin in the configured chain."""
    out: dict[str, bool] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        values = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}
        if not eq or value.strip().lower() not in values:
            _fail(f"--feature {item!r}: expected NAME=on or NAME=off")
        _check_switch("--feature", item, name, switches)
        out[name] = values[value.strip().lower()]
    return out


def _check_switch(option: str, item: str, name: str, switches: FeatureRegistry) -> None:
    try:
        switches.check(name)
    except FeatureError as exc:
        _fail(f"{option} {item!r}: unknown feature: {exc}")


@main.group()
def credentials() -> None:
    """Manage SMTP credentials (API keys, logins, IP allow-lists) in <data_dir>/credentials.db."""


@credentials.command("add")
@click.argument("name")
@config_option
@click.option("--kind", type=click.Choice(["apikey", "password", "ip"]), default="apikey", show_default=True)
@click.option("--username", help="Login for --kind password.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of generating one.")
@click.option("--network", "networks", multiple=True, metavar="CIDR", help="Allowed network for --kind ip (repeatable).")
@click.option("--feature", "features", multiple=True, metavar="NAME=on|off", help="Feature switch (repeatable).")
@click.option("--lock", "locked", multiple=True, metavar="NAME", help="Ignore X-SMTPeter-NAME headers (repeatable).")
@click.option("--sandbox", is_flag=True, help="Accept and process mail but never deliver it.")
@click.option("--sender-domain", "sender_domains", multiple=True, metavar="DOMAIN",
              help="Allowed MAIL FROM domain (repeatable; .example.com includes subdomains).")
@click.option("--max-size", type=click.IntRange(min=1), help="Maximum message size in bytes.")
@click.option("--max-recipients", type=click.IntRange(min=1), help="Maximum recipients per message.")
@click.option("--rate", type=click.IntRange(min=1), help="Maximum messages per minute.")
@click.option("--egress", help="Named [egresses] entry to deliver through.")
@click.option("--webhook", "webhooks", multiple=True, metavar="URL", help="Webhook URL (repeatable).")
def add(name: str, config_path: str | None, kind: str, username: str | None, password_stdin: bool,
        networks: tuple[str, ...], features: tuple[str, ...], locked: tuple[str, ...], sandbox: bool,
        sender_domains: tuple[str, ...], max_size: int | None, max_recipients: int | None, rate: int | None,
        egress: str | None, webhooks: tuple[str, ...]) -> None:
    """Add a credential; a generated API key or password is printed once."""
    config = get_config(config_path)
    if _in_config(config, name):
        _fail(f"credential {name!r} is declared in {config.source}; choose another name")
    if kind == "ip" and not networks:
        _fail("--kind ip needs at least one --network")
    if kind != "ip" and networks:
        _fail("--network is only for --kind ip")
    if kind != "password" and (username or password_stdin):
        _fail("--username and --password-stdin are only for --kind password")
    if egress and egress not in config.egresses:
        _fail(f"--egress {egress!r}: no [egresses.{egress}] in {config.source}")
    switches = feature_registry(config)  # the switches of the plugins in the configured chain
    for item in locked:
        _check_switch("--lock", item, item.lower(), switches)
    secret = None
    if password_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            _fail("empty password on stdin")
    options: dict[str, Any] = {
        "features": _parse_features(features, switches),
        "locked": [f.lower() for f in locked],
        "sandbox": sandbox,
        "allowed_sender_domains": list(sender_domains),
        "max_message_size": max_size,
        "max_recipients": max_recipients,
        "messages_per_minute": rate,
        "egress": egress,
        "webhooks": list(webhooks),
    }
    store = _store(config)
    try:
        generated = store.add(name, kind, username=username, secret=secret, networks=networks, options=options)
    except CredentialError as exc:
        _fail(str(exc))
    finally:
        store.close()
    if kind == "apikey":
        click.echo(f"Added API key credential {name!r}. The key is shown only now: log in with user 'apikey' "
                   "(or any user) and the key as password.", err=True)
        click.echo(generated)
    elif kind == "password":
        if generated:
            click.echo(f"Added credential {name!r} for user {username!r}. The password is shown only now:", err=True)
            click.echo(generated)
        else:
            click.echo(f"Added credential {name!r} for user {username!r}.", err=True)
    else:
        click.echo(f"Added IP allow-list credential {name!r} for {', '.join(networks)}.", err=True)


@credentials.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(config_path: str | None, as_json: bool) -> None:
    """List credentials (never their secrets)."""
    config = get_config(config_path, existing=True)
    rows: list[dict[str, Any]] = []
    for c in config.credentials:
        rows.append({
            "name": c.name, "kind": c.kind, "username": c.username, "networks": c.networks, "disabled": c.disabled,
            "sandbox": c.sandbox, "features": c.features, "locked": c.locked, "source": config.source,
        })
    store = _store(config)
    try:
        for r in store.list():
            rows.append({**r, "source": "credentials.db"})
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no credentials (add one with: smtpgate credentials add NAME)")
        return
    click.echo(f"{'NAME':<24} {'KIND':<8} {'LOGIN / NETWORKS':<28} {'STATUS':<9} {'FEATURES':<30} SOURCE")
    for r in rows:
        who = r.get("username") or ", ".join(r.get("networks") or []) or (
            f"apikey {r['key_id']}" if r.get("key_id") else "apikey")
        status = "disabled" if r["disabled"] else ("sandbox" if r.get("sandbox") else "active")
        feats = " ".join(f"{k}={'on' if v else 'off'}" for k, v in sorted((r.get("features") or {}).items()))
        click.echo(f"{r['name']:<24} {r['kind']:<8} {who:<28} {status:<9} {feats or '-':<30} {r['source']}")


def _change(config_path: str | None, name: str, action: str) -> None:
    config = get_config(config_path, existing=True)
    if _in_config(config, name):
        _fail(f"credential {name!r} is declared in {config.source}: {action} it there")
    store = _store(config)
    try:
        if action == "remove":
            store.remove(name)
        else:
            store.set_disabled(name, action == "disable")
    except CredentialError as exc:
        _fail(str(exc))
    finally:
        store.close()
    click.echo(f"{action.rstrip('e')}ed credential {name!r}", err=True)


@credentials.command()
@click.argument("name")
@config_option
def disable(name: str, config_path: str | None) -> None:
    """Refuse AUTH for a credential (535 5.7.8) without deleting it."""
    _change(config_path, name, "disable")


@credentials.command()
@click.argument("name")
@config_option
def enable(name: str, config_path: str | None) -> None:
    """Re-enable a disabled credential."""
    _change(config_path, name, "enable")


@credentials.command()
@click.argument("name")
@config_option
def remove(name: str, config_path: str | None) -> None:
    """Delete a credential."""
    _change(config_path, name, "remove")


@credentials.command("hash")
def hash_() -> None:
    """Read a secret from stdin and print its hash for a config file's secret_hash."""
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        _fail("empty secret on stdin")
    click.echo(hash_secret(secret))
