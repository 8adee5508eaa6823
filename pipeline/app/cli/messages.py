"""``smtpgate messages search|show``: the message log in a terminal, the CLI twins of
``GET /api/v1/messages`` and ``GET /api/v1/messages/{queue_id}``.

The habit they replace is ``grep QUEUEID /var/log/mail.log``: ``search`` finds a message by
recipient, sender, Message-Id, campaign, credential or state; ``show`` prints its whole story
(acceptance, admission trace, every delivery attempt and tracking event, the headers). Both read
the log (``events.db``, or ``[storage] url``'s PostgreSQL, where every node's messages are) and the
spool, for a message still queued, directly, so they work with or without a running server.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import click

from pipeline.api.app import decode_cursor, encode_cursor
from pipeline.app.cli import config_option, get_config, main
from pipeline.events import has_event_store, open_message_log
from pipeline.events.messages import LOG_STATES
from pipeline.events.stats import parse_date
from pipeline.ports import MessageFilter
from pipeline.spool import has_spool, open_spool


def _fail(message: str, status: int = 1) -> None:
    click.echo(f"smtpgate: {message}", err=True)
    sys.exit(status)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _date(text: str | None, end: bool = False) -> float | None:
    if not text:
        return None
    try:
        return parse_date(text, end=end)
    except ValueError as exc:
        _fail(str(exc), 2)
    return None


@main.group()
def messages() -> None:
    """Find a message and what happened to it (the message log: <data_dir>/events.db or [storage] url)."""


@messages.command("search")
@config_option
@click.option("--recipient", metavar="ADDRESS")
@click.option("--sender", metavar="ADDRESS", help="Envelope sender.")
@click.option("--message-id", metavar="ID", help="The Message-Id header.")
@click.option("--queue-id", metavar="ID")
@click.option("--campaign", metavar="ID")
@click.option("--credential", metavar="NAME")
@click.option("--state", type=click.Choice(LOG_STATES),
              help="At least one recipient in this state.")
@click.option("--since", metavar="DATE", help="YYYY-MM-DD (UTC) or an ISO date-time.")
@click.option("--until", metavar="DATE", help="YYYY-MM-DD (UTC, the whole day) or an ISO date-time.")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", metavar="NEXT", help="The next page: the `next` value of a previous --json search.")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON: {messages, next}.")
def search(config_path: str | None, recipient: str | None, sender: str | None, message_id: str | None,
           queue_id: str | None, campaign: str | None, credential: str | None, state: str | None,
           since: str | None, until: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """Messages matching every given filter, newest first."""
    config = get_config(config_path)
    if not has_event_store(config):
        _fail(f"no message log yet ({config.data_dir / 'events.db'} does not exist)")
    f = MessageFilter(recipient=recipient, sender=sender, message_id=message_id, queue_id=queue_id,
                      campaign=campaign, credential=credential, state=state, since=_date(since),
                      until=_date(until, end=True))
    try:
        before = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        _fail(f"--cursor: {exc}", 2)
    log = open_message_log(config)
    try:
        page, next_id = log.search(f, limit, before)
    finally:
        log.close()
    if as_json:
        click.echo(json.dumps({"messages": page, "next": encode_cursor(next_id) if next_id is not None else None}, indent=2, default=str))
        return
    if not page:
        click.echo("no matching messages", err=True)
        sys.exit(1)
    click.echo(f"{'QUEUE ID':<22} {'ACCEPTED (UTC)':<23} {'FROM':<28} {'CREDENTIAL':<14} RECIPIENTS")
    for m in page:
        rcpts = ", ".join(f"{r['address']} ({r['state']})" for r in m["recipients"])
        click.echo(f"{m['queue_id']:<22} {_when(m['accepted_at']):<23} {m['mail_from'] or '-':<28} "
                   f"{m['credential'] or '-':<14} {rcpts}")
    if next_id is not None:
        click.echo(f"(more: --cursor {encode_cursor(next_id)}, or narrow the search)", err=True)


def _event_line(e: dict[str, Any]) -> str:
    skip = {"type", "at", "recipient"}
    details = " ".join(f"{k}={v}" for k, v in e.items() if k not in skip and v not in (None, "", [], {}))
    return f"  {_when(e['at'])}  {e['type']:<12} {e.get('recipient') or '-':<30} {details}"


def _trace(entries: list[dict[str, Any]]) -> None:
    for t in entries:
        click.echo(f"  {t['phase']:<14} {t['plugin']:<22} {t['verdict']:<24} {t['ms']:8.2f} ms"
                   + (f"  error: {t['error']}" if t.get("error") else ""))
        for edit in t["edits"]:
            click.echo(f"      {edit}")


@messages.command("show")
@click.argument("queue_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help="The API's JSON story.")
def show(queue_id: str, config_path: str | None, as_json: bool) -> None:
    """The whole story of one message: acceptance, trace, attempts, events, headers."""
    config = get_config(config_path)
    story = None
    if has_event_store(config):
        log = open_message_log(config)
        try:
            story = log.message(queue_id)
        finally:
            log.close()
    if story is None:
        _fail(f"no message {queue_id!r} in the message log")
        return
    spooled = None
    if has_spool(config):
        spool = open_spool(config)
        try:
            spooled = spool.show(queue_id)
        finally:
            spool.close()
    story["spooled"] = spooled is not None
    if as_json:
        click.echo(json.dumps(story, indent=2, default=str))
        return
    s = story
    click.echo(f"queue id:    {s['queue_id']}")
    click.echo(f"accepted:    {_when(s['accepted_at'])} UTC from {s.get('client_ip') or '-'} "
               f"(listener {s.get('listener') or '-'}, TLS {'yes' if s.get('tls') else 'no'}, "
               f"credential {s.get('credential') or '-'}, {s.get('size', 0)} bytes)")
    click.echo(f"from:        <{s['mail_from'] or ''}>")
    click.echo(f"subject:     {s.get('subject') or '-'}")
    click.echo(f"message-id:  {s.get('message_id') or '-'}")
    click.echo(f"campaign:    {s.get('campaign_id') or '-'}  letter: {s.get('letter_id') or '-'}")
    click.echo(f"in queue:    {'yes' if spooled else 'no'}")
    click.echo("recipients:")
    for r in s["recipients"]:
        click.echo(f"  {r['address']:<40} {r['state']}")
    if s.get("trace"):
        click.echo("admission trace:")
        _trace(s["trace"])
    for r in s["recipients"]:
        if r.get("processing"):
            click.echo(f"processing trace for {r['address']} (last attempt):")
            _trace(r["processing"])
    click.echo("events:")
    for e in s["events"]:
        click.echo(_event_line(e))
    if s.get("headers"):
        click.echo("headers (as spooled):")
        for name, value in s["headers"]:
            click.echo(f"  {name}: {value}")
    for r in s["recipients"]:
        if r.get("final_headers"):
            click.echo(f"headers of the copy for {r['address']} (as it left):")
            for name, value in r["final_headers"]:
                click.echo(f"  {name}: {value}")
