"""Plugins bring their own ``smtpgate`` commands through the ``smtpgate_cli_commands`` hook:
the core CLI finds them (built-ins and entry points) without importing any plugin itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from pipeline.app.cli import main, plugin_commands
from pipeline.chain.loader import ENTRY_POINT_GROUP, resolve

THIRD_PARTY = '''
import click
from pipeline import Plugin, hookimpl


class Greeting(Plugin):
    name = "greeting"

    @hookimpl
    def on_message(self, ctx):
        return None

    @staticmethod
    @hookimpl
    def smtpgate_cli_commands(load_env, config_option):
        @click.command("greet")
        @config_option
        def greet(config_path):
            """Say hello from a plugin."""
            click.echo(f"hello from {load_env(config_path).data_dir}")

        return [greet]
'''


@pytest.fixture
def greeting_distribution(tmp_path, monkeypatch):
    """An installed distribution whose entry point is a plugin that brings a ``greet`` command."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "greeting_plugin.py").write_text(THIRD_PARTY)
    info = site / "greeting_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: greeting-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ngreeting = greeting_plugin:Greeting\n")
    (info / "RECORD").write_text("")
    monkeypatch.syspath_prepend(str(site))
    plugin_commands.cache_clear()
    yield site
    plugin_commands.cache_clear()
    sys.modules.pop("greeting_plugin", None)


def test_an_entry_point_plugin_adds_a_command_that_sees_the_config(greeting_distribution, data_dir):
    result = CliRunner().invoke(main, ["greet"])
    assert result.exit_code == 0, result.output
    assert result.output == f"hello from {data_dir}\n"
    assert "greet" in CliRunner().invoke(main, ["--help"]).output


def test_a_config_error_in_a_plugin_command_is_one_line_exit_2(greeting_distribution, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nnope = 1\n")
    result = CliRunner().invoke(main, ["greet", "--config", str(bad)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and f"{bad}: gateway.nope: unknown key" in result.output


def test_the_dkim_commands_come_from_the_plugin_through_the_hook():
    commands = plugin_commands()
    assert "keygen" in commands["dkim"].commands  # type: ignore[attr-defined]
    dkim_sign, _ = resolve("dkim_sign")
    assert "smtpgate_cli_commands" in dir(dkim_sign)


def test_core_commands_do_not_load_plugin_commands(tmp_path):
    """``check-config`` (which loads the chain, dkim_sign included) never imports the plugin's CLI."""
    code = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from pipeline.app.cli import main
        result = CliRunner().invoke(main, ["check-config"])
        assert result.exit_code == 0, result.output
        print("plugins.dkim_sign" in sys.modules, "plugins.dkim_sign.cli" in sys.modules)
        CliRunner().invoke(main, ["dkim", "--help"])
        print("plugins.dkim_sign.cli" in sys.modules)
        """
    )
    env_data = tmp_path / "data"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "SMTPGATE_DATA_DIR": str(env_data)},
    ).stdout.split()
    assert out == ["True", "False", "True"]


def test_each_core_command_is_listed_with_its_module_and_only_its_module_loads():
    """``COMMAND_MODULES`` names every command the CLI package's modules define (a command missing
    from it would not exist), and running one command imports that command's module alone."""
    import importlib
    import pkgutil

    import pipeline.app.cli as cli

    for mod in pkgutil.iter_modules(cli.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"pipeline.app.cli.{mod.name}")
    defined = {name: cmd.callback.__module__.rsplit(".", 1)[1] for name, cmd in main.commands.items()
               if cmd.callback is not None}
    assert defined == cli.COMMAND_MODULES

    code = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from pipeline.app.cli import main
        result = CliRunner().invoke(main, ["status", "--help"])
        assert result.exit_code == 0, result.output
        print(sorted(m for m in sys.modules if m.startswith("pipeline.app.cli.")))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pipeline.app.cli.status']"
