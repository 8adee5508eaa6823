"""``smtpgate status``: like ``postfix status`` plus the last line of ``mailq``.

Running or not (the pid file ``serve`` writes in the data directory: this node), pid and uptime,
the queue by state, the oldest queued message and the last delivery error (with ``[storage] url``:
the whole cluster's). Exit 0 when running, 3 when
not (the LSB status code for "not running"), 1 when there is no instance at all.
"""

from __future__ import annotations

import collections
import json
import sys
import time

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.app.instance import read_pid_file
from pipeline.config import Config
from pipeline.events import has_event_store, open_event_store
from pipeline.spool import has_spool, open_spool

NOT_RUNNING = 3


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def last_delivery_error(config: Config) -> str | None:
    """The newest deferred/bounced/expired/failed event: when, who, and the remote's reply."""
    if not has_event_store(config):  # no events.db yet (with [storage] url: the shared store)
        return None
    store = open_event_store(config)
    try:
        rows = store.query(
            "SELECT time, type, queue_id, recipient, data FROM events "
            "WHERE type IN ('deferred', 'bounced', 'expired', 'failed') ORDER BY id DESC LIMIT 1"
        )
    finally:
        store.close()
    if not rows:
        return None
    when, type_, queue_id, recipient, data = rows[0]
    detail = json.loads(data or "{}")
    reply = f"{detail.get('dsn', '')} {detail.get('reply', '')}".strip()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{stamp} {queue_id}: to=<{recipient}>, status={type_} ({reply or 'no reply'})"


@main.command()
@config_option
def status(config_path: str | None) -> None:
    """Is the gateway running (pid, uptime), the queue by state, the oldest message, the last delivery error."""
    config = get_config(config_path, existing=True)
    info = read_pid_file(config.data_dir)
    now = time.time()
    if info is not None and info.running:
        click.echo(f"smtpgate is running: pid {info.pid}, up {_age(now - info.started)}")
    elif info is not None:
        click.echo(f"smtpgate is not running (stale pid file: pid {info.pid} is gone)")
    else:
        click.echo("smtpgate is not running")
    rows = []
    if has_spool(config):  # [storage] url: the whole cluster's queue
        spool = open_spool(config)
        try:
            rows = spool.list_recipients()
        finally:
            spool.close()
    if rows:
        by_state = collections.Counter(r["state"] for r in rows)
        messages = len({r["queue_id"] for r in rows})
        states = ", ".join(f"{state} {n}" for state, n in sorted(by_state.items()))
        click.echo(f"queue: {messages} message(s), {len(rows)} recipient(s): {states}")
        oldest = min(rows, key=lambda r: r["created_at"])
        click.echo(f"oldest: {oldest['queue_id']} queued {_age(now - oldest['created_at'])} ago")
    else:
        click.echo("queue: empty")
    error = last_delivery_error(config)
    click.echo(f"last delivery error: {error or 'none'}")
    if info is None or not info.running:
        sys.exit(NOT_RUNNING)


__all__ = ["status"]
