"""``smtpgate tls-report send|show``: a day's SMTP TLS reports (RFC 8460) to the domains that ask.

Direct delivery counts every session made under an MTA-STS or DANE policy in
``<data_dir>/egress.db``; run ``smtpgate tls-report send`` once a day (cron) to turn yesterday's
counts into one report per domain and send it where the domain's ``_smtp._tls`` TXT record says:
``https:`` addresses get a gzip POST, ``mailto:`` addresses a report message through the spool.
"""

from __future__ import annotations

import asyncio
import datetime
import email.message
import email.policy
import email.utils
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.chain.loader import resolve
from pipeline.config import Config
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.egress.mx import dns_resolver
from pipeline.egress.state import EgressState
from pipeline.egress.tlsrpt import build_reports, gzip_report, post_report, report_filename, rua_for
from pipeline.spool import Spool, open_spool


def _sign_only(config: Config) -> dict[str, bool]:
    """Every switch of the chain off but the signers' (a report is signed, never tracked)."""
    classes = [resolve(name)[0] for name in config.chain.plugins]
    return {c.feature: bool(getattr(c, "seals_message", False)) for c in classes if getattr(c, "feature", None)}


def _yesterday() -> str:
    return (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)).isoformat()


def _reports(config: Config, day: str, organization: str | None, contact: str | None) -> dict[str, dict[str, Any]]:
    path = config.data_dir / "egress.db"
    if not path.exists():
        return {}
    host = config.gateway.hostname
    state = EgressState(path)
    try:
        return build_reports(state, day, organization or host, contact or f"postmaster@{host}")
    finally:
        state.close()


def report_message(config: Config, report: dict[str, Any], domain: str, to: str, day: str) -> bytes:
    """RFC 8460 5.3: ``multipart/report; report-type="tlsrpt"`` with the gzipped JSON attached."""
    host = config.gateway.hostname
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"TLS reporting <noreply-tlsrpt@{host}>"
    msg["To"] = to
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain=host)
    msg["Subject"] = f"Report Domain: {domain} Submitter: {report['organization-name']} Report-ID: <{report['report-id']}>"
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = report["organization-name"]
    msg.set_content(f"This is an aggregate TLS report from {report['organization-name']} for {day}.\n")
    msg.add_attachment(gzip_report(report), maintype="application", subtype="tlsrpt+gzip",
                       filename=report_filename(host, domain, day))
    msg.replace_header("Content-Type", 'multipart/report; report-type="tlsrpt"; boundary="'
                       + str(msg.get_boundary()) + '"')
    return msg.as_bytes()


async def _send(config: Config, reports: dict[str, dict[str, Any]], day: str) -> list[str]:
    resolver = dns_resolver(config, config.tls_policy.mta_sts_timeout)
    ca_file = str(config.tls_policy.ca_file) if config.tls_policy.ca_file else None
    lines: list[str] = []
    spool: Spool | None = None
    try:
        for domain, report in sorted(reports.items()):
            targets = await rua_for(resolver, domain)
            if not targets:
                lines.append(f"{domain}: no _smtp._tls record, not sent")
                continue
            body = gzip_report(report)
            for target in targets:
                try:
                    if target.startswith("https:"):
                        await post_report(target, body, config.tls_policy.mta_sts_timeout, ca_file, resolver)
                        lines.append(f"{domain}: posted to {target}")
                    else:
                        to = target.removeprefix("mailto:").split("?")[0]
                        data = report_message(config, report, domain, to, day).replace(b"\r\n", b"\n").replace(
                            b"\n", b"\r\n")
                        ctx = MessageContext(message=Message(data, "", [to]), campaign_id="tls-reports",
                                             features=_sign_only(config))
                        spool = spool or open_spool(config)  # [storage] url: the shared queue
                        await spool.enqueue(ctx, data, [to])
                        lines.append(f"{domain}: mailed to {to} (queued as {ctx.queue_id})")
                except Exception as exc:  # one domain's unreachable endpoint must not stop the others
                    lines.append(f"{domain}: sending to {target} failed: {exc}")
    finally:
        if spool is not None:
            spool.close()
    return lines


@main.group("tls-report")
def tls_report() -> None:
    """SMTP TLS reports (RFC 8460) on direct delivery's MTA-STS and DANE sessions."""


def _report_options(fn: Callable[..., None]) -> Callable[..., None]:
    """``--config``, ``--day``, ``--organization``, ``--contact``: shared by ``show`` and ``send``."""
    for option in (
        click.option("--contact", default=None, help="contact-info (default: postmaster@hostname)."),
        click.option("--organization", default=None, help="organization-name (default: [gateway] hostname)."),
        click.option("--day", default=None, help="UTC day YYYY-MM-DD (default: yesterday)."),
        config_option,
    ):
        fn = option(fn)
    return fn


@tls_report.command("show")
@_report_options
def show_cmd(config_path: str | None, day: str | None, organization: str | None, contact: str | None) -> None:
    """Print the day's reports as JSON, one object per domain."""
    config = get_config(config_path)
    click.echo(json.dumps(_reports(config, day or _yesterday(), organization, contact), indent=1))


@tls_report.command("send")
@_report_options
def send_cmd(config_path: str | None, day: str | None, organization: str | None, contact: str | None) -> None:
    """Send the day's reports to each domain's _smtp._tls addresses; exit 1 if any failed."""
    config = get_config(config_path)
    day = day or _yesterday()
    try:
        datetime.date.fromisoformat(day)
    except ValueError:
        click.echo(f"smtpgate: tls-report: --day {day!r} is not YYYY-MM-DD", err=True)
        sys.exit(2)
    reports = _reports(config, day, organization, contact)
    if not reports:
        click.echo(f"no TLS sessions under a policy were counted on {day}")
        return
    lines = asyncio.run(_send(config, reports, day))
    for line in lines:
        click.echo(line)
    if any(" failed: " in line for line in lines):
        sys.exit(1)
