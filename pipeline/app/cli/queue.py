"""``smtpgate queue list|show|retry|hold|release|delete|flush``: the spool, like ``mailq`` and ``postqueue``.

These commands open the spool directly (the SQLite file, or ``[storage] url``'s PostgreSQL, where
they see and act on the whole cluster's queue), so they work whether or not a server runs; a
running server re-reads the queue every ``spool.poll_interval`` and picks up ``retry``/``flush``.
"""

from __future__ import annotations

import collections
import datetime
import email.parser
import email.policy
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.config import Config
from pipeline.egress.router import EgressRouter
from pipeline.egress.state import read_suspensions
from pipeline.spool import Spool, open_spool


def _fail(message: str, status: int = 1) -> None:
    click.echo(f"smtpgate: {message}", err=True)
    sys.exit(status)


def _where(config: Config) -> str:
    """The spool's location for messages (never the PostgreSQL password)."""
    if config.storage.url is not None:
        return "the PostgreSQL spool ([storage] url)"
    return str(config.data_dir / "spool.db")


def _open(config: Config) -> Spool | None:
    if config.storage.url is None and not (config.data_dir / "spool.db").exists():
        return None
    try:
        return open_spool(config)
    except Exception as exc:  # a damaged or locked file, an unreachable database: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(f"cannot open spool {_where(config)}: {first}")
    return None


def next_hop(config: Config, context: dict[str, Any]) -> str:
    """Where a message's copies go, as ``queue list`` summarises it."""
    name = EgressRouter.name_for(context.get("credential"))
    if name == EgressRouter.SANDBOX:
        return f"sandbox maildir {config.data_dir / 'sandbox'}"
    section = config.egress if name == "default" else config.egresses.get(name)
    if section is None:
        return f"{name} (not configured)"
    label = "" if name == "default" else f"{name}: "
    if section.type == "smtp":
        return f"{label}smtp {section.host}:{section.port}"
    if section.type == "mx":
        return f"{label}mx"
    if section.type == "null":
        return f"{label}null"
    return f"{label}maildir {section.maildir or config.data_dir / 'maildir'}"


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%a %b %d %H:%M:%S")


@main.group()
def queue() -> None:
    """Inspect and manage the delivery queue (the spool)."""


@queue.command("list")
@config_option
def list_cmd(config_path: str | None) -> None:
    """List queued messages with each recipient's state, like mailq; then a summary."""
    config = get_config(config_path, existing=True)
    spool = _open(config)
    rows = spool.list_recipients() if spool else []
    if not rows:
        click.echo("Mail queue is empty")
        _suspended(config)
        return
    contexts: dict[str, Any] = {}
    for qid in {r["queue_id"] for r in rows} if spool else ():
        shown = spool.show(qid) if spool else None
        if shown is not None:  # None: delivered and removed since list_recipients()
            contexts[qid] = shown["context"]
    click.echo(f"{'-Queue ID-':<22} {'--Size--':>8} {'----Arrival Time----':<20}  -Sender/Recipient-------")
    by_state: collections.Counter[str] = collections.Counter()
    by_hop: collections.Counter[str] = collections.Counter()
    sizes: dict[str, int] = {}
    current = None
    for r in rows:
        if r["queue_id"] != current:
            current = r["queue_id"]
            sizes[current] = r["size"]
            click.echo(f"{current:<22} {r['size']:>8} {_when(r['created_at']):<20}  {r['mail_from'] or '<>'}")
            by_hop[next_hop(config, contexts.get(current, {}))] += 1
        by_state[r["state"]] += 1
        detail = r["state"]
        if r["state"] == "deferred" or (r["state"] == "queued" and r["next_attempt"] > time.time()):
            detail += f", next attempt {_when(r['next_attempt'])}"
        if r["attempts"]:
            detail += f", {r['attempts']} attempt(s)"
        if r["last_reply"] and r["state"] != "queued":
            click.echo(f"{'':<54}({r['last_reply']})")
        click.echo(f"{'':<54}{r['recipient']}  [{detail}]")
    kbytes = max(1, sum(sizes.values()) // 1024)
    click.echo(f"-- {kbytes} Kbytes in {len(sizes)} Request{'s' if len(sizes) != 1 else ''}.")
    click.echo("By state: " + ", ".join(f"{s} {n}" for s, n in sorted(by_state.items())))
    click.echo("By next hop: " + ", ".join(f"{h} ({n})" for h, n in sorted(by_hop.items())))
    _suspended(config)
    if spool:
        spool.close()


def _suspended(config: Config) -> None:
    """Destinations traffic shaping has suspended after a throttling reply (``<data_dir>/egress.db``)."""
    try:
        suspended = read_suspensions(config.data_dir, time.time())
    except Exception as exc:  # a damaged or locked file must not hide the queue itself
        click.echo(f"Suspended destinations: unknown ({exc})")
        return
    if not suspended:
        return
    click.echo("Suspended destinations (throttling replies; their recipients wait without using an attempt):")
    for s in suspended:
        source = f" from {s.source}" if s.source else ""
        click.echo(f"  {s.site}{source} until {_when(s.until)}: {s.reason}")


@queue.command("show")
@click.argument("queue_id")
@config_option
@click.option("--body", is_flag=True, help="Print the whole message, not only its headers.")
def show_cmd(queue_id: str, config_path: str | None, body: bool) -> None:
    """Show one message: envelope, credential, features, each recipient's state, headers."""
    config = get_config(config_path, existing=True)
    spool = _open(config)
    info = spool.show(queue_id) if spool else None
    if info is None:
        _fail(f"queue: no message {queue_id} in {_where(config)}")
        return
    ctx = info["context"]
    cred = (ctx.get("credential") or {}).get("name")
    click.echo(f"Queue ID:   {queue_id}")
    click.echo(f"Arrived:    {_when(info['created_at'])}")
    click.echo(f"Sender:     {info['mail_from'] or '<>'}")
    click.echo(f"Credential: {cred or '-'}")
    click.echo(f"Campaign:   {ctx.get('campaign_id') or '-'}   Letter: {ctx.get('letter_id') or '-'}")
    features = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in sorted(ctx.get("features", {}).items()))
    click.echo(f"Features:   {features or '-'}")
    if ctx.get("tags") or ctx.get("metadata"):
        click.echo(f"Tags:       {', '.join(ctx.get('tags') or []) or '-'}")
        click.echo(f"Metadata:   {json.dumps(ctx.get('metadata') or {}, ensure_ascii=False)}")
    for key, label in (("not_before", "Send at:   "), ("deliver_by", "Deliver by:")):
        if ctx.get(key):
            click.echo(f"{label} {_when(ctx[key])}")
    click.echo(f"Next hop:   {next_hop(config, ctx)}")
    click.echo(f"Size:       {len(info['data'])} bytes")
    click.echo("Recipients:")
    for r in info["recipients"]:
        line = f"  {r['recipient']}  {r['state']}, {r['attempts']} attempt(s)"
        if r["state"] == "deferred" or (r["state"] == "queued" and r["next_attempt"] > time.time()):
            line += f", next {_when(r['next_attempt'])}"
        click.echo(line)
        if r["last_reply"]:
            click.echo(f"    last reply: {r['last_reply']}")
    click.echo("")
    data: bytes = info["data"]
    if body:
        click.echo(data.decode("utf-8", "replace"), nl=False)
    else:
        head = data.split(b"\r\n\r\n", 1)[0]
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        for name, value in parsed.items():
            click.echo(f"{name}: {value}")
    if spool:
        spool.close()


def _on_message(config_path: str | None, queue_id: str, act: Callable[[Spool, str], int], done: str) -> None:
    """One action on one queued message (retry, hold, release): a clear error when it is not there."""
    config = get_config(config_path, existing=True)
    spool = _open(config)
    if spool is None or spool.show(queue_id) is None:
        _fail(f"queue: no message {queue_id} in {_where(config)}")
        return
    try:
        n = act(spool, queue_id)
    finally:
        spool.close()
    click.echo(f"{queue_id}: {n} recipient(s) {done}")


@queue.command("retry")
@click.argument("queue_id")
@config_option
def retry_cmd(queue_id: str, config_path: str | None) -> None:
    """Make a message's deferred recipients due now."""
    _on_message(config_path, queue_id, lambda spool, qid: spool.retry(qid), "due now")


@queue.command("hold")
@click.argument("queue_id")
@config_option
def hold_cmd(queue_id: str, config_path: str | None) -> None:
    """Keep a message's waiting recipients from being attempted until released (like postsuper -h)."""
    _on_message(config_path, queue_id, lambda spool, qid: spool.hold(qid), "held")


@queue.command("release")
@click.argument("queue_id")
@config_option
def release_cmd(queue_id: str, config_path: str | None) -> None:
    """Release a held message: its recipients are queued and due now (like postsuper -H)."""
    _on_message(config_path, queue_id, lambda spool, qid: spool.unhold(qid), "released")


@queue.command("delete")
@click.argument("queue_id")
@config_option
def delete_cmd(queue_id: str, config_path: str | None) -> None:
    """Remove a message from the queue (it is not delivered; no bounce is sent)."""
    config = get_config(config_path, existing=True)
    spool = _open(config)
    if spool is None or not spool.delete(queue_id):
        _fail(f"queue: no message {queue_id} in {_where(config)}")
        return
    spool.close()
    click.echo(f"{queue_id}: deleted")


@queue.command("flush")
@config_option
def flush_cmd(config_path: str | None) -> None:
    """Make every deferred recipient due now (like postqueue -f)."""
    config = get_config(config_path, existing=True)
    spool = _open(config)
    n = spool.retry(None) if spool else 0
    if spool:
        spool.close()
    click.echo(f"{n} recipient(s) due now")


