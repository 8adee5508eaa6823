"""``smtpgate events prune``: event retention for ``<data_dir>/events.db``.

Works whether or not the server runs (batches are short transactions). Pending webhook
deliveries and the suppression list are never deleted (see :mod:`pipeline.events.retention`).
"""

from __future__ import annotations

import datetime
import re
import sys
import time
from typing import NoReturn

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.events.retention import BATCH, prune_events

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _fail(message: str, status: int = 2) -> NoReturn:
    click.echo(f"smtpgate: {message}", err=True)
    sys.exit(status)


def parse_age(text: str) -> float:
    """``90d`` -> seconds (units s, m, h, d, w); ``ValueError`` otherwise."""
    m = _AGE.match(text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"--older-than {text!r}: expected a positive number and a unit, e.g. 90d, 12h, 2w")
    return int(m.group(1)) * _UNIT[m.group(2).lower()]


def parse_date(text: str) -> float:
    """``2026-08-01`` (midnight UTC) or an ISO 8601 time (UTC unless it has an offset) -> Unix time."""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--before {text!r}: expected a date (2026-08-01) or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _show(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@main.group()
def events() -> None:
    """The event store (<data_dir>/events.db)."""


@events.command("prune")
@config_option
@click.option("--before", "before_text", metavar="DATE", help="Delete events recorded before DATE (UTC).")
@click.option("--older-than", "age_text", metavar="AGE", help="Delete events older than AGE: 90d, 12h, 2w.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--batch-size", type=click.IntRange(1, 10000), default=BATCH, show_default=True,
              help="Events deleted per transaction.")
def prune(config_path: str | None, before_text: str | None, age_text: str | None, dry_run: bool,
          batch_size: int) -> None:
    """Delete old events; pending webhook deliveries and the suppression list are kept."""
    if (before_text is None) == (age_text is None):
        _fail("events prune: give exactly one of --before DATE and --older-than AGE")
    now = time.time()
    try:
        before = parse_date(before_text) if before_text is not None else now - parse_age(age_text or "")
    except ValueError as exc:
        _fail(str(exc))
    if before > now:
        _fail(f"--before {before_text}: that is in the future (it would delete every event)")
    config = get_config(config_path, existing=True)
    if config.storage.url is not None:
        _fail("events prune: not built for the PostgreSQL store yet ([storage] url); see docs/scaling.md", 1)
    path = config.data_dir / "events.db"
    if not path.exists():
        click.echo(f"{path}: no event store, nothing to prune")
        return
    try:
        result = prune_events(path, before, batch=batch_size, dry_run=dry_run)
    except Exception as exc:  # a locked or damaged database: one line, no traceback
        _fail(f"cannot prune {path}: {exc}", 1)
    verb = "would delete" if dry_run else "deleted"
    line = f"{verb} {result.events} event(s) recorded before {_show(before)}"
    if result.webhook_rows:
        line += f" and {result.webhook_rows} finished webhook deliver{'y' if result.webhook_rows == 1 else 'ies'}"
    click.echo(line)
    if result.messages:
        click.echo(f"{verb} {result.messages} message(s) from the message log")
    if result.kept_pending:
        click.echo(f"kept {result.kept_pending} older event(s) whose webhooks are still pending")


__all__ = ["events", "parse_age", "parse_date", "prune"]
