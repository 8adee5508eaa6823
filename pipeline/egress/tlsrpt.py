"""SMTP TLS Reporting (RFC 8460): count, per day and recipient domain, the sessions direct
delivery made under an MTA-STS or DANE policy (successful, and failed by result type), and turn a
day's counts into the JSON reports the domains ask for in their ``_smtp._tls`` TXT record.

Counting is always on (a row per domain, policy, MX and result per day in ``egress.db``);
sending is ``smtpgate tls-report send`` (run daily, e.g. from cron): ``https:`` addresses get a
gzip POST (``application/tlsrpt+gzip``), ``mailto:`` addresses a report message through the
spool (pipeline/app/cli/tlsreport.py).
"""

from __future__ import annotations

import datetime
import gzip
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from pipeline.egress.mtasts import DnsOverResolver
from pipeline.egress.resolver import DnsTemporaryError, PolicyResolver
from pipeline.egress.state import EgressState
from pipeline.egress.tlspolicy import client_context

log = logging.getLogger("smtpgate.egress")

# Our failure texts -> RFC 8460 section 4.3 result types.
RESULT_TYPES = (
    ("offers no STARTTLS", "starttls-not-supported"),
    ("STARTTLS not offered", "starttls-not-supported"),
    ("Hostname mismatch", "certificate-host-mismatch"),
    ("certificate has expired", "certificate-expired"),
    ("certificate did not verify", "certificate-not-trusted"),
    ("TLSA lookup", "dnssec-invalid"),
    ("DANE:", "validation-failure"),
    ("MTA-STS policy", "validation-failure"),
)


def result_type(reason: str) -> str:
    for needle, kind in RESULT_TYPES:
        if needle in reason:
            return kind
    return "validation-failure"


class TlsReports:
    """Counts sessions per (day, domain, policy, MX, result) in ``egress.db``."""

    def __init__(self, state: EgressState | None, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock

    def record(self, domain: str, policy_type: str, policy: list[str], mx: str, failure: str | None) -> None:
        """One session under ``policy_type`` (``sts`` or ``tlsa``): ``failure`` is ``None`` on success."""
        if self.state is None:
            return
        day = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC).date().isoformat()
        result = "success" if failure is None else result_type(failure)
        try:
            self.state.add_tlsrpt(day, domain.lower(), policy_type, json.dumps(policy), mx.lower(), result)
        except Exception:  # a report row lost is a statistic lost, never a delivery
            log.exception("counting a TLS session for %s failed", domain)


def build_reports(state: EgressState, day: str, organization: str, contact: str) -> dict[str, dict[str, Any]]:
    """The RFC 8460 report of ``day`` (``YYYY-MM-DD``, UTC) for each domain with counted sessions."""
    by_domain: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for domain, policy_type, policy, mx, result, count in state.tlsrpt_rows(day):
        policies = by_domain.setdefault(domain, {})
        entry = policies.setdefault((policy_type, policy), {
            "policy": {"policy-type": policy_type, "policy-string": json.loads(policy), "policy-domain": domain},
            "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
            "failure-details": [],
        })
        if result == "success":
            entry["summary"]["total-successful-session-count"] += count
        else:
            entry["summary"]["total-failure-session-count"] += count
            entry["failure-details"].append({"result-type": result, "receiving-mx-hostname": mx,
                                             "failed-session-count": count})
        hosts = entry["policy"].setdefault("mx-host", [])
        if policy_type == "sts" and mx not in hosts:
            hosts.append(mx)
    reports = {}
    for domain, policies in by_domain.items():
        reports[domain] = {
            "organization-name": organization,
            "date-range": {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"},
            "contact-info": contact,
            "report-id": f"{day}.{domain}@{organization}",
            "policies": list(policies.values()),
        }
    return reports


def parse_rua(records: list[str]) -> list[str]:
    """The ``rua`` addresses of the one ``v=TLSRPTv1`` record (RFC 8460 3), else ``[]``."""
    found = [r for r in records if r.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(found) != 1:
        return []
    for part in found[0].split(";"):
        key, _, value = part.strip().partition("=")
        if key == "rua":
            return [u.strip() for u in value.split(",") if u.strip().startswith(("mailto:", "https:"))]
    return []


def report_filename(reporter: str, domain: str, day: str) -> str:
    """RFC 8460 5.3: ``receiver!policy-domain!begin!end!unique.json.gz``."""
    start = int(datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC).timestamp())
    return f"{reporter}!{domain}!{start}!{start + 86399}!1.json.gz"


async def post_report(url: str, body: bytes, timeout: float, ca_file: str | None, resolver: PolicyResolver) -> None:
    """POST one gzipped report over verified HTTPS; raises on anything but 2xx."""
    connector = aiohttp.TCPConnector(ssl=client_context(True, ca_file), resolver=DnsOverResolver(resolver),
                                     use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(url, data=body, headers={"Content-Type": "application/tlsrpt+gzip"}) as resp:
            if not 200 <= resp.status < 300:
                raise OSError(f"{url} answered HTTP {resp.status}")


async def rua_for(resolver: PolicyResolver, domain: str) -> list[str]:
    try:
        return parse_rua(await resolver.txt(f"_smtp._tls.{domain}"))
    except DnsTemporaryError as exc:
        log.warning("TLS-RPT: no report address for %s (%s)", domain, exc)
        return []


def gzip_report(report: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(report, indent=1).encode(), mtime=0)
