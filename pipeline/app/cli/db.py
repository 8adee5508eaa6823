"""``smtpgate db upgrade|status``: the PostgreSQL schema, for operators.

``serve`` upgrades the schema itself at start (under an advisory lock, so nodes starting together
serialise); these commands let an operator apply a release's migrations before a rolling upgrade
and see which version a database is at. With the embedded SQLite store there is nothing to do.
"""

from __future__ import annotations

import datetime
import sys

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.config import Config
from pipeline.storage import postgres


def _url(config: Config) -> str:
    if config.storage.url is None:
        click.echo("storage: embedded SQLite in "
                   f"{config.data_dir} (no [storage] url): its tables are created on open, nothing to migrate")
        sys.exit(0)
    return config.storage.url


def _fail(exc: Exception) -> None:
    click.echo(f"smtpgate: database: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}", err=True)
    sys.exit(1)


@main.group()
def db() -> None:
    """The PostgreSQL schema ([storage] url): upgrade and status."""


@db.command()
@config_option
def upgrade(config_path: str | None) -> None:
    """Apply pending schema migrations (safe while other nodes run: migrations only add)."""
    url = _url(get_config(config_path))
    try:
        applied = postgres.upgrade(url)
    except Exception as exc:  # unreachable server, bad credentials: one line, no traceback
        _fail(exc)
    if applied:
        click.echo(f"applied migrations {', '.join(map(str, applied))}; schema version {postgres.LATEST}")
    else:
        click.echo(f"schema is up to date (version {postgres.LATEST})")


@db.command()
@config_option
def status(config_path: str | None) -> None:
    """Applied and pending migrations; exit 1 while any is pending."""
    url = _url(get_config(config_path))
    try:
        st = postgres.status(url)
    except Exception as exc:
        _fail(exc)
    for version, name, applied_at in st.applied:
        when = datetime.datetime.fromtimestamp(applied_at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        click.echo(f"{version:>4}  applied {when}  {name}")
    for version, name in st.pending:
        click.echo(f"{version:>4}  pending                      {name}")
    known = postgres.LATEST
    if st.current > known:
        click.echo(f"schema version {st.current} is newer than this smtpgate knows ({known})")
    click.echo(f"schema version {st.current} of {known}")
    sys.exit(1 if st.pending else 0)
