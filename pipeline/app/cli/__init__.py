"""The ``smtpgate`` command. Each module in this package adds its commands to :data:`main`.

Errors a user can cause (bad config, missing file, bad argument) print one line and exit
non-zero; they never show a traceback.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from typing import Any

import click

from pipeline.config import Config, ConfigError, load_config


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"smtpgate: config error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.version_option(package_name="smtpgate")
def main(verbose: bool) -> None:
    """smtpgate: a self-hosted SMTP gateway that authenticates, improves, signs, tracks and delivers mail."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="smtpgate.toml (default: $SMTPGATE_CONFIG, else embedded defaults).",
)


def get_config(path: str | None) -> Config:
    return load_config(path)


for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):  # __main__ is `python -m pipeline.app.cli`, not a command module
        importlib.import_module(f"{__name__}.{_mod.name}")
