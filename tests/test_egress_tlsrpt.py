"""TLS-RPT (RFC 8460): sessions under MTA-STS and DANE are counted per day, and
``smtpgate tls-report send`` posts each domain's report to its ``https:`` address and queues a
report message for its ``mailto:`` address."""

from __future__ import annotations

import datetime
import email
import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.app.cli import main
from pipeline.egress.tlsrpt import parse_rua, result_type
from pipeline.spool.sqlite import SqliteSpool
from tests.test_egress_tls import Net, send


@pytest.fixture
async def net(tmp_path: Path):
    n = await Net(tmp_path).start()
    yield n
    await n.close()


def write_config(net: Net, path: Path) -> Path:
    path.write_text(
        f'[gateway]\ndata_dir = "{net.tmp / "data"}"\nhostname = "gw.test"\n'
        f'[dns]\nnameservers = ["127.0.0.1"]\nport = {net.zone.port}\ntimeout = 2.0\n'
        f'[tls_policy]\nca_file = "{net.ca.ca_file}"\nmta_sts_port = {net.https.port}\n'
    )
    return path


async def test_sessions_are_counted_and_the_days_reports_are_posted_and_mailed(net, tmp_path):
    egress = net.egress()
    assert (await send(egress, "a@good.test")).status == "sent"
    assert (await send(egress, "b@good.test")).status == "sent"
    assert (await send(egress, "c@badcert.test")).status == "deferred"
    await egress.shared.close()
    net.zone.add("reports.good.test", "A", "127.0.0.1")
    net.zone.add("_smtp._tls.good.test", "TXT", f'"v=TLSRPTv1; rua=https://reports.good.test:{net.https.port}/tlsrpt"')
    net.zone.add("_smtp._tls.badcert.test", "TXT", '"v=TLSRPTv1; rua=mailto:tls-reports@badcert.test"')
    config = write_config(net, tmp_path / "smtpgate.toml")
    today = datetime.datetime.now(datetime.UTC).date().isoformat()

    result = await _invoke(["tls-report", "send", "--config", str(config), "--day", today])
    assert result.exit_code == 0, result.output
    assert "good.test: posted to https://reports.good.test" in result.output
    assert "badcert.test: mailed to tls-reports@badcert.test (queued as " in result.output

    [(host, content_type, body)] = net.https.reports
    assert (host, content_type) == ("reports.good.test", "application/tlsrpt+gzip")
    report = json.loads(gzip.decompress(body))
    assert report["date-range"] == {"start-datetime": f"{today}T00:00:00Z", "end-datetime": f"{today}T23:59:59Z"}
    [policy] = report["policies"]
    assert policy["policy"]["policy-type"] == "sts" and policy["policy"]["policy-domain"] == "good.test"
    assert "mode: enforce" in policy["policy"]["policy-string"]
    assert policy["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}  # pooled

    [row] = SqliteSpool(net.tmp / "data" / "spool.db").list_recipients()
    assert row["recipient"] == "tls-reports@badcert.test"
    shown = SqliteSpool(net.tmp / "data" / "spool.db").show(row["queue_id"])
    assert shown is not None
    mail = email.message_from_bytes(shown["data"])
    assert mail.get_content_type() == "multipart/report" and mail.get_param("report-type") == "tlsrpt"
    assert mail["TLS-Report-Domain"] == "badcert.test"
    [attached] = [p for p in mail.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    failed = json.loads(gzip.decompress(attached.get_payload(decode=True)))
    assert failed["policies"][0]["summary"]["total-failure-session-count"] == 1
    assert failed["policies"][0]["failure-details"] == [
        {"result-type": "certificate-not-trusted", "receiving-mx-hostname": "mx.bad.test", "failed-session-count": 1}]


async def _invoke(args: list[str]):
    import asyncio

    return await asyncio.to_thread(CliRunner().invoke, main, args)


def test_report_addresses_and_result_types():
    assert parse_rua(['v=TLSRPTv1; rua=mailto:a@x.test,https://r.x.test/tlsrpt']) == [
        "mailto:a@x.test", "https://r.x.test/tlsrpt"]
    assert parse_rua(["v=spf1 -all"]) == []
    assert parse_rua(["v=TLSRPTv1; rua=mailto:a@x.test", "v=TLSRPTv1; rua=mailto:b@x.test"]) == []  # ambiguous
    assert result_type("TLS with mx[1.2.3.4]:25 failed: certificate did not verify: self signed") == \
        "certificate-not-trusted"
    assert result_type("TLS is required for mx (mta-sts) but mx[1.2.3.4]:25 offers no STARTTLS") == \
        "starttls-not-supported"
    assert result_type("DANE: no certificate matches the TLSA records of mx") == "validation-failure"
