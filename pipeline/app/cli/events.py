"""``smtpgate events prune``: event retention for ``<data_dir>/events.db`` or ``[storage] url``'s
shared PostgreSQL (one run prunes every node's events); ``smtpgate events list``:
the newest events (``--type rejected``: refusals), as ``GET /api/v1/events`` lists them.

Works whether or not the server runs (batches are short transactions). Pending webhook
deliveries and the suppression list are never deleted (see :mod:`pipeline.events.retention`).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from typing import Any, NoReturn

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.events import open_event_store
from pipeline.events.listing import EventQuery, event_page
from pipeline.events.retention import BATCH, prune_store

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
    """The event store (<data_dir>/events.db, or [storage] url)."""


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
    path = config.data_dir / "events.db"
    if config.storage.url is None and not path.exists():
        click.echo(f"{path}: no event store, nothing to prune")
        return
    where = "the shared PostgreSQL store" if config.storage.url is not None else str(path)
    try:
        store = open_event_store(config)  # [storage] url: every node's events, pruned once
        try:
            result = prune_store(store, before, batch=batch_size, dry_run=dry_run)
        finally:
            store.close()
    except Exception as exc:  # a locked, damaged or unreachable database: one line, no traceback
        _fail(f"cannot prune {where}: {exc}", 1)
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


def _refusal_line(e: dict[str, Any]) -> str:
    """One event on one line; a refusal says where, what and from whom (the grep habit)."""
    d = e["data"]
    when = datetime.datetime.fromtimestamp(e["time"], datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if e["type"] != "rejected":
        return f"{when}  {e['type']:<12} {e['queue_id'] or '-'}  {e['recipient'] or '-'}  {e['credential'] or '-'}"
    count = f" x{d.get('count', 1)}" if d.get("repeated") else ""
    who = f"credential={e['credential'] or '-'} client={d.get('client_ip', '-')} listener={d.get('listener', '-')}"
    envelope = f" from=<{d['sender']}>" if d.get("sender") is not None else ""
    envelope += f" to=<{e['recipient']}>" if e["recipient"] else ""
    reply = f"{d.get('code', '')} {d.get('enhanced') or ''} {d.get('text', '')}".replace("  ", " ")
    return f"{when}  rejected {d.get('phase', '-'):<7} {who}{envelope}{count}: {reply}"


@events.command("list")
@config_option
@click.option("--type", "type_", metavar="TYPE", default=None, help="Only this type, e.g. rejected (refusals).")
@click.option("--credential", metavar="NAME", default=None, help="Only this credential's events.")
@click.option("--since", metavar="DATE", default=None, help="From this UTC date or ISO time.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON (as GET /api/v1/events).")
def list_events(config_path: str | None, type_: str | None, credential: str | None, since: str | None, limit: int,
                as_json: bool) -> None:
    """The newest events, e.g. `--type rejected`: refusals with their reply, phase and client."""
    try:
        query = EventQuery(type=type_, credential=credential, since=parse_date(since) if since else None)
    except ValueError as exc:
        _fail(str(exc).replace("--before", "--since"))
    store = open_event_store(get_config(config_path, existing=True))
    try:
        page, _ = event_page(store, query, limit)
    except ValueError as exc:
        _fail(f"--type: {exc}")
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"events": page}, indent=2))
    elif not page:
        click.echo("no events")
    else:
        for e in page:
            click.echo(_refusal_line(e))
