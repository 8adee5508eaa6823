"""``smtpgate stats`` and ``smtpgate suppression list|add|remove``: read the event store from
the command line (it may run while the server does: SQLite WAL allows concurrent readers and
the suppression writes are single short transactions)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.events import GLOBAL_SCOPE, open_event_store
from pipeline.events.stats import campaign_stats, parse_date, tag_stats, totals
from pipeline.events.store import EventStoreBase

COLUMNS = [
    ("sent", "sent"), ("delivered", "deliv"), ("bounced_hard", "hard"), ("bounced_soft", "soft"),
    ("opens", "opens"), ("unique_opens", "u.opens"), ("machine_opens", "m.opens"), ("clicks", "clicks"),
    ("unique_clicks", "u.clicks"), ("machine_clicks", "m.clicks"), ("unsubscribes", "unsub"),
    ("complaints", "compl"), ("open_rate", "open%"), ("click_rate", "click%"), ("bounce_rate", "bounce%"),
]


def _fail(message: str) -> None:
    click.echo(f"smtpgate: {message}", err=True)
    sys.exit(2)


def _store(config_path: str | None, existing: bool = True) -> EventStoreBase:
    """The event store; a read (``existing``) needs the data directory to be there already."""
    return open_event_store(get_config(config_path, existing=existing))


def _cell(field: str, value: Any) -> str:
    return f"{value * 100:.1f}" if field.endswith("_rate") else str(value)


def render_table(rows: list[dict[str, Any]], by_day: bool, first: str = "campaign", total_line: bool = True) -> str:
    """A fixed-width table, one line per campaign (and day), then the total."""
    head = [first] + (["day"] if by_day else []) + [label for _, label in COLUMNS]
    lines = [[r["campaign"] or "-"] + ([r["day"]] if by_day else []) + [_cell(f, r[f]) for f, _ in COLUMNS]
             for r in rows]
    if rows:
        total = totals(rows) if not by_day and total_line else None
        if total is not None:
            lines.append(["TOTAL"] + [_cell(f, total[f]) for f, _ in COLUMNS])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i < (2 if by_day else 1) else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*line) for line in [head, *lines])


@main.command()
@config_option
@click.option("--campaign", metavar="ID", default=None, help="Only this campaign ('' for mail without one).")
@click.option("--since", metavar="DATE", default=None, help="From this UTC date (YYYY-MM-DD) or ISO date-time.")
@click.option("--until", metavar="DATE", default=None, help="Up to the end of this UTC date.")
@click.option("--daily", is_flag=True, help="One line per campaign and day.")
@click.option("--by-tag", is_flag=True, help="One line per message tag (vendor categories and tags).")
@click.option("--credential", metavar="NAME", default=None, help="Only this credential's mail.")
@click.option("--by-credential", is_flag=True,
              help="One line per credential and campaign (two credentials' same campaign id stay apart).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(config_path: str | None, campaign: str | None, since: str | None, until: str | None, daily: bool,
          by_tag: bool, credential: str | None, by_credential: bool, as_json: bool) -> None:
    """Campaign statistics: sent, delivered, bounces, opens, clicks (human and machine), unsubscribes."""
    try:
        since_ts = parse_date(since) if since else None
        until_ts = parse_date(until, end=True) if until else None
    except ValueError as exc:
        _fail(f"--since/--until: {exc}")
    if by_tag and (daily or campaign is not None):
        _fail("--by-tag: not with --daily or --campaign")
    store = _store(config_path)
    try:
        if by_tag:
            rows = tag_stats(store, since=since_ts, until=until_ts, credential=credential)
        else:
            rows = campaign_stats(store, campaign=campaign, since=since_ts, until=until_ts, by_day=daily,
                                  credential=credential, by_credential=by_credential)
    finally:
        store.close()
    if by_tag:  # a message with two tags counts under both: no total line
        if as_json or not rows:
            click.echo(json.dumps({"rows": rows}, indent=2) if as_json else "no tagged events")
        else:
            click.echo(render_table([{**r, "campaign": r["tag"]} for r in rows], False, "tag", total_line=False))
        return
    if as_json:
        click.echo(json.dumps({"rows": rows, "totals": totals(rows)}, indent=2))
    elif not rows:
        click.echo("no events" + (f" for campaign {campaign!r}" if campaign is not None else "")
                   + (f" of credential {credential!r}" if credential is not None else ""))
    elif by_credential:  # "credential/campaign" in the first column
        labelled = [{**r, "campaign": f"{r['credential'] or '-'}/{r['campaign'] or '-'}"} for r in rows]
        click.echo(render_table(labelled, daily, "credential/campaign"))
    else:
        click.echo(render_table(rows, daily))


@main.group()
def suppression() -> None:
    """The stoplist: addresses that get '550 5.0.0 Email is in the account stoplist' at RCPT."""


def _check_address(address: str) -> str:
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in address.strip()):
        _fail(f"not an email address: {address!r}")
    return address.strip().strip("<>")


@suppression.command("list")
@config_option
@click.option("--credential", metavar="NAME", default=None, help="Only this credential's entries.")
@click.option("--global", "global_only", is_flag=True, help="Only global entries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def suppression_list(config_path: str | None, credential: str | None, global_only: bool, as_json: bool) -> None:
    """List suppressed addresses with their scope, reason and date."""
    store = _store(config_path)
    try:
        entries = store.suppressions(GLOBAL_SCOPE if global_only else credential)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([e.__dict__ for e in entries], indent=2))
        return
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.time))
        click.echo(f"{e.address}\t{e.scope or '(global)'}\t{e.reason}\t{when}")
    click.echo(f"{len(entries)} address(es)", err=True)


@suppression.command("add")
@config_option
@click.argument("addresses", nargs=-1, required=True)
@click.option("--credential", metavar="NAME", default=None, help="For this credential only (default: global).")
@click.option("--reason", default="manual", show_default=True)
def suppression_add(config_path: str | None, addresses: tuple[str, ...], credential: str | None, reason: str) -> None:
    """Add addresses to the stoplist."""
    checked = [_check_address(a) for a in addresses]
    store = _store(config_path, existing=False)
    try:
        for address in checked:
            added = store.suppress(address, credential or GLOBAL_SCOPE, reason)
            click.echo(f"{'added' if added else 'already suppressed'}: {address.lower()}")
    finally:
        store.close()


@suppression.command("remove")
@config_option
@click.argument("addresses", nargs=-1, required=True)
@click.option("--credential", metavar="NAME", default=None, help="From this credential's entries only.")
@click.option("--global", "global_only", is_flag=True, help="From the global entries only.")
def suppression_remove(config_path: str | None, addresses: tuple[str, ...], credential: str | None,
                       global_only: bool) -> None:
    """Remove addresses (from every scope unless --credential or --global). Exit 1 if one was not listed."""
    checked = [_check_address(a) for a in addresses]
    missing = 0
    store = _store(config_path)
    try:
        for address in checked:
            n = store.unsuppress(address, GLOBAL_SCOPE if global_only else credential)
            click.echo(f"removed: {address.lower()}" if n else f"not suppressed: {address.lower()}")
            missing += n == 0
    finally:
        store.close()
    if missing:
        sys.exit(1)


@main.group()
def webhooks() -> None:
    """Webhook endpoints: what a receiver needs to verify them."""


@webhooks.command("sendgrid-public-key")
@config_option
def sendgrid_public_key(config_path: str | None) -> None:
    """Print each sendgrid-format endpoint's verification key (base64 DER, as SendGrid shows it)."""
    from pipeline.events.webhook_formats.sendgrid import load_key, public_key

    config = get_config(config_path)
    endpoints = [e for e in config.webhooks.endpoints if e.format == "sendgrid"]
    if not endpoints:
        _fail("no [[webhooks.endpoints]] with format = \"sendgrid\"")
    for endpoint in endpoints:
        click.echo(f"{endpoint.url} {public_key(load_key(config, endpoint))}")
