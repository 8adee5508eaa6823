"""``smtpgate credentials``: add prints a secret once, list never shows it, disable/remove work
against a running server without a restart, and mistakes are one-line errors (both backends: on
PostgreSQL a change reaches a running node within ``CredentialStore.SHARED_TTL`` seconds)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from click.testing import CliRunner

from pipeline.accounts.store import CredentialStore
from pipeline.app.cli import main
from pipeline.app.harness import Dialogue, client_tls, ingress_test_config, running_ingress


@pytest.fixture
def cb(backend, monkeypatch):
    """The backend, with CLI runs pointed at it."""
    backend.export_env(monkeypatch)
    return backend


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_add_list_disable_remove(cb):
    added = run("credentials", "add", "shop", "--feature", "trackopens=off", "--lock", "trackopens",
                "--sender-domain", "shop.example", "--rate", "100")
    assert added.exit_code == 0, added.output
    key = added.stdout.strip()
    assert key.startswith("sg_") and "shown only now" in added.stderr
    pw = run("credentials", "add", "demo", "--kind", "password", "--username", "demo.demo@smtpgate", "--sandbox")
    password = pw.stdout.strip()
    assert pw.exit_code == 0 and len(password) >= 20
    ip = run("credentials", "add", "office", "--kind", "ip", "--network", "192.0.2.0/24")
    assert ip.exit_code == 0 and ip.stdout == ""

    listed = run("credentials", "list")
    assert listed.exit_code == 0
    assert key not in listed.output and password not in listed.output
    lines = {line.split()[0]: line for line in listed.output.splitlines()[1:]}
    assert "trackopens=off" in lines["shop"] and "active" in lines["shop"]
    assert "sandbox" in lines["demo"] and "demo.demo@smtpgate" in lines["demo"]
    assert "192.0.2.0/24" in lines["office"]
    rows = {r["name"]: r for r in json.loads(run("credentials", "list", "--json").stdout)}
    assert rows["shop"]["locked"] == ["trackopens"] and rows["shop"]["messages_per_minute"] == 100
    assert "secret_hash" not in rows["shop"]

    assert run("credentials", "disable", "shop").exit_code == 0
    assert "disabled" in [line for line in run("credentials", "list").output.splitlines() if line.startswith("shop")][0]
    rows = {r["name"]: r for r in json.loads(run("credentials", "list", "--json").stdout)}
    assert rows["shop"]["disabled"] is True
    assert run("credentials", "enable", "shop").exit_code == 0
    assert run("credentials", "remove", "office").exit_code == 0
    rows = {r["name"]: r for r in json.loads(run("credentials", "list", "--json").stdout)}
    assert set(rows) == {"shop", "demo"} and rows["shop"]["disabled"] is False


def test_password_from_stdin_and_hash_for_config(cb):
    r = run("credentials", "add", "peter", "--kind", "password", "--username", "my-username", "--password-stdin",
            input="my-password\n")
    assert r.exit_code == 0 and r.stdout == ""
    h = run("credentials", "hash", input="my-password\n")
    assert h.exit_code == 0 and h.stdout.startswith("scrypt$") and "my-password" not in h.stdout


def test_mistakes_are_one_line_errors(cb):
    run("credentials", "add", "dup")
    cases = [
        (("credentials", "add", "dup"), "a credential named 'dup' already exists"),
        (("credentials", "add", "x", "--kind", "ip"), "--kind ip needs at least one --network"),
        (("credentials", "add", "x", "--kind", "ip", "--network", "nope"), "'nope' is not an IP network"),
        (("credentials", "add", "x", "--feature", "trackopens"), "expected NAME=on or NAME=off"),
        (("credentials", "add", "x", "--kind", "password"), "a password credential needs --username"),
        (("credentials", "add", "x", "--egress", "relay"), "--egress 'relay': no [egresses.relay]"),
        (("credentials", "disable", "ghost"), "no credential named 'ghost'"),
        (("credentials", "remove", "ghost"), "no credential named 'ghost'"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.exit_code == 1, args
        errors = [line for line in r.stderr.splitlines() if not line.startswith("smtpgate: config ")]
        assert errors == [f"smtpgate: {message}"] or (len(errors) == 1 and message in errors[0]), (args, r.stderr)
        assert "Traceback" not in r.output


def test_config_credentials_are_listed_but_not_changed(cb, tmp_path):
    config = tmp_path / "smtpgate.toml"
    config.write_text('[[credentials]]\nname = "cfg"\nkind = "apikey"\nsecret = "k"\n')
    cb.data_dir.mkdir(parents=True, exist_ok=True)
    listed = run("credentials", "list", "--config", str(config))
    assert "cfg" in listed.stdout and str(config) in listed.stdout and "k\n" not in listed.output
    r = run("credentials", "disable", "cfg", "--config", str(config))
    assert r.exit_code == 1 and f"declared in {config}" in r.stderr
    r = run("credentials", "add", "cfg", "--config", str(config))
    assert r.exit_code == 1


async def test_running_server_sees_cli_changes(cb, tls_cert):
    key = run("credentials", "add", "live").stdout.strip()
    auth = "AUTH PLAIN " + base64.b64encode(f"\0apikey\0{key}".encode()).decode()
    async with running_ingress(ingress_test_config(cb.data_dir, tls_cert, **cb.overrides)) as (_, ingress):
        async def try_auth() -> int:
            d = await Dialogue.connect("127.0.0.1", ingress.port("smtps"), tls=client_tls(tls_cert))
            await d.reply()
            await d.cmd("EHLO cli.test")
            code = (await d.cmd(auth)).code
            await d.close()
            return code

        async def refused_within(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while await try_auth() != 535:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.2)
            return True

        assert await try_auth() == 235
        assert run("credentials", "disable", "live").exit_code == 0
        assert await refused_within(0 if cb.url is None else CredentialStore.SHARED_TTL + 1)
        assert run("credentials", "remove", "live").exit_code == 0
        assert await try_auth() == 535
