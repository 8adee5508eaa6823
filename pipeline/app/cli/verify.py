"""``smtpgate verify ADDRESS...``: does this mailbox exist? (MX, RCPT TO, never DATA).

Exit status: 0 when every address is deliverable (or at a catch-all domain), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import sys

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.app.verify import verify_addresses
from pipeline.egress.resolver import DnsResolver, Resolver


def make_resolver(timeout: float) -> Resolver:
    """The DNS resolver the command uses (one place to swap it, e.g. for tests)."""
    return DnsResolver(timeout=timeout)


@main.command()
@click.argument("addresses", nargs=-1, required=True)
@config_option
@click.option("--mail-from", default="", metavar="ADDRESS", help="Reverse path for MAIL FROM (default: <>).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="SMTP port (default: [egress] mx_port).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True, help="Seconds per step.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per address.")
def verify(
    addresses: tuple[str, ...], config_path: str | None, mail_from: str, port: int | None, timeout: float, as_json: bool
) -> None:
    """Check addresses against their mail servers: deliverable, undeliverable, unknown or catch-all."""
    config = get_config(config_path, quiet=True)
    results = asyncio.run(
        verify_addresses(
            list(addresses),
            resolver=make_resolver(timeout),
            port=port or config.egress.mx_port,
            helo=config.egress.helo_name or config.gateway.hostname,
            mail_from=mail_from,
            timeout=timeout,
        )
    )
    for r in results:
        if as_json:
            click.echo(json.dumps({"address": r.address, "status": r.status, "reply": r.reply, "mx": r.mx}))
        else:
            via = f" via {r.mx}" if r.mx else ""
            click.echo(f"{r.address}: {r.status} ({r.reply}){via}")
    sys.exit(0 if all(r.status in ("deliverable", "catch-all") for r in results) else 1)
