"""``smtpgate replay --credential NAME`` finds credentials in ``[[credentials]]`` and in
``<data_dir>/credentials.db`` (``smtpgate credentials add``), the file winning as in the server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.app.cli import main
from pipeline.contract.message import Message

PLUGIN = """
from pipeline import Plugin, hookimpl


class ShowCredential(Plugin):
    name = "show_credential"

    @hookimpl
    def on_personalize(self, ctx):
        cred = ctx.credential
        ctx.message.add_header("X-Credential", cred.name if cred else "-")
        ctx.message.add_header("X-Sandbox", str(bool(cred and cred.sandbox)))
        ctx.message.add_header("X-Trackclicks", str(ctx.enabled("trackclicks")))
"""

RAW = b"From: app@example.org\r\nTo: a@example.net\r\nSubject: hi\r\n\r\nHello\r\n"


@pytest.fixture
def env(tmp_path: Path, data_dir: Path) -> Path:
    (tmp_path / "show.py").write_text(PLUGIN)
    (tmp_path / "smtpgate.toml").write_text(textwrap.dedent(f"""
        [chain]
        plugins = ["click_tracking", "{tmp_path / 'show.py'}:ShowCredential"]  # click_tracking: the switch
        [[credentials]]
        name = "both"
        features = {{ trackclicks = true }}
        """))
    (tmp_path / "msg.eml").write_bytes(RAW)
    return tmp_path


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def replay_as(env: Path, name: str) -> tuple[Result, Message | None]:
    out = env / f"out-{name}"
    result = cli("replay", "--config", str(env / "smtpgate.toml"), str(env / "msg.eml"),
                 "--credential", name, "--out", str(out))
    copies = list(out.iterdir()) if out.exists() else []
    return result, Message(copies[0].read_bytes()) if copies else None


def test_credential_added_with_the_cli_is_used_by_replay(env, data_dir):
    added = cli("credentials", "add", "stored", "--kind", "apikey", "--feature", "trackclicks=off", "--sandbox")
    assert added.exit_code == 0, added.output
    result, copy = replay_as(env, "stored")
    assert result.exit_code == 0, result.output
    assert copy is not None
    assert copy.get("X-Credential") == "stored" and copy.get("X-Sandbox") == "True" and copy.get("X-Trackclicks") == "False"


def test_config_file_credential_wins_over_a_stored_one_of_the_same_name(env, data_dir):
    assert cli("credentials", "add", "both", "--kind", "apikey", "--feature", "trackclicks=off").exit_code == 0
    result, copy = replay_as(env, "both")
    assert result.exit_code == 0, result.output
    assert copy is not None and copy.get("X-Trackclicks") == "True"


def test_disabled_or_unknown_stored_credential_is_a_one_line_error(env, data_dir):
    assert cli("credentials", "add", "old", "--kind", "apikey").exit_code == 0
    assert cli("credentials", "disable", "old").exit_code == 0
    result, _ = replay_as(env, "old")
    assert result.exit_code == 2 and "credential 'old' is disabled" in result.output
    result, _ = replay_as(env, "nope")
    assert result.exit_code == 2
    assert "no credential named 'nope' (known: both, old)" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_looking_for_a_credential_does_not_create_the_store(env, data_dir):
    result, _ = replay_as(env, "nope")
    assert result.exit_code == 2 and "(known: both)" in result.output
    assert not (data_dir / "credentials.db").exists()
