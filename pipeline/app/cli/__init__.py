"""The ``smtpgate`` command. Each module in this package adds its commands to :data:`main`, and is
imported only when one of its commands runs (:data:`COMMAND_MODULES`): ``serve`` is a long-lived
process and must not carry every other command's imports (psycopg for ``db``, the resolver for
``verify``...). Plugins add theirs through the ``smtpgate_cli_commands`` hook (:func:`plugin_commands`), so the
core never imports a plugin.

Errors a user can cause (bad config, missing file, bad argument) print one line and exit
non-zero; they never show a traceback.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import sys
from typing import Any

import click
import pluggy

from pipeline.chain.loader import BUILTINS, ENTRY_POINT_GROUP, plugin_env, resolve
from pipeline.config import Config, ConfigError, load_config
from pipeline.contract import hookspecs
from pipeline.contract.plugin import PluginEnv
from pipeline.toolkit.logs import setup_logging


def _load_env(config_path: str | None) -> PluginEnv:
    return plugin_env(load_config(config_path))


@functools.cache
def plugin_commands() -> dict[str, click.Command]:
    """The commands every built-in and entry-point plugin brings (``smtpgate_cli_commands``).

    Loaded only when a command is not a core one (or for ``--help``), so core commands never
    import the plugins. A plugin that cannot be loaded is reported on stderr and skipped: its
    commands are missing, the others still work.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    names = list(BUILTINS) + sorted(
        ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTINS
    )
    for name in names:
        try:
            cls, _ = resolve(name)
            if "smtpgate_cli_commands" in dir(cls):
                pm.register(cls, name=name)
        except (ConfigError, pluggy.PluginValidationError) as exc:
            click.echo(f"smtpgate: plugin {name}: its commands are not available: {exc}", err=True)
    commands: dict[str, click.Command] = {}
    for impl in reversed(pm.hook.smtpgate_cli_commands.get_hookimpls()):  # registration order
        brought: Any = impl.function(load_env=_load_env, config_option=config_option) or []
        for command in brought:
            if not isinstance(command, click.Command) or not command.name:
                raise TypeError(f"plugin {impl.plugin_name}: smtpgate_cli_commands returned {command!r}")
            commands.setdefault(command.name, command)
    return commands


# Each core command and the module of this package that defines it (tests/test_cli.py checks the
# list against what the modules define). A module is imported when one of its commands is asked for.
COMMAND_MODULES = {
    "api-tokens": "api_tokens",
    "check-config": "core",
    "credentials": "credentials",
    "db": "db",
    "events": "events",
    "init": "init",
    "messages": "messages",
    "milter": "milter",
    "plugins": "core",
    "queue": "queue",
    "replay": "core",
    "serve": "serve",
    "stats": "tracking",
    "status": "status",
    "suppression": "tracking",
    "tls-report": "tlsreport",
    "verify": "verify",
    "webhooks": "tracking",
}


class _Group(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"{__name__}.{module}")  # registers its commands on main
        core = super().get_command(ctx, cmd_name)
        return core if core is not None else plugin_commands().get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES) | set(plugin_commands()))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            for line in str(exc).splitlines():  # one problem per line, each one greppable
                click.echo(f"smtpgate: config error: {line}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.version_option(package_name="smtpgate")
def main(verbose: bool) -> None:
    """smtpgate: a self-hosted SMTP gateway that authenticates, improves, signs, tracks and delivers mail."""
    setup_logging(logging.DEBUG if verbose else logging.INFO)  # serve applies [gateway] log_format


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="smtpgate.toml (default: $SMTPGATE_CONFIG, ./smtpgate.toml, /etc/smtpgate/smtpgate.toml, "
    "else embedded defaults).",
)


def get_config(path: str | None, *, existing: bool = False, quiet: bool = False) -> Config:
    """The instance a command works on, found as ``serve`` finds it (:func:`pipeline.config.find_config`).

    Says on stderr which config and data directory it uses (``quiet``: not, for commands whose
    stderr is an output). ``existing``: a read command, which must not create an empty data
    directory: when there is none it says so and exits 1. A config error reports the core and
    the plugin sections together.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        if exc.raw is None:
            raise
        from pipeline.chain.loader import plugin_config_errors

        raise ConfigError("\n".join([str(exc), *plugin_config_errors(exc)])) from None
    if not quiet:
        click.echo(f"smtpgate: config {config.source}, data dir {config.data_dir.absolute()}", err=True)
    if existing and config.storage.url is None and not config.data_dir.is_dir():  # PostgreSQL: state is there
        click.echo(
            f"smtpgate: no instance: data directory {config.data_dir.absolute()} does not exist "
            f"(config {config.source}); pass --config or set $SMTPGATE_CONFIG, or run `smtpgate init`",
            err=True,
        )
        sys.exit(1)
    return config
