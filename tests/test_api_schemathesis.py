"""schemathesis (PyPI) against the served OpenAPI document of a real running API, with an
administrator's token: generated and boundary requests on every operation, and no 5xx, no status
the document does not list, no body or content type that breaks it. Bounded (few examples per
operation, one worker) so it stays well under a minute on the shared machine.

``POST /api/v1/webhooks/{id}/test`` is left out: it POSTs to whatever URL a generated endpoint
names, which would reach beyond 127.0.0.1 (tests/test_api_webhooks_domains.py covers it). The
DNS check asks the local zone server, never public DNS.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from pipeline.app.gateway import Gateway
from pipeline.config import load_config
from plugins.dkim_sign.keys import generate_key
from tests.support.egress_net import ZoneServer
from tests.test_api import TOML, cli, wait_for
from tests.test_api_webhooks_domains import send

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


async def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key, _ = generate_key("shop.example", "s1", data / "dkim")
    zone = await ZoneServer().start()
    zone.add("shop.example", "TXT", '"v=spf1 a:gw.test ~all"')
    conf = tmp_path / "smtpgate.toml"
    conf.write_text(
        TOML.format(data=data) + f'[plugins.dkim_sign.domains."shop.example"]\nselector = "s1"\n'
        f'key_file = "{key}"\n[dns]\nnameservers = ["127.0.0.1"]\nport = {zone.port}\ntimeout = 1.0\n'
    )
    admin = cli("api-tokens", "add", "admin", "--config", str(conf)).stdout.strip()
    gw = Gateway(load_config(str(conf)))
    ingress = gw.ingress_service()
    api = gw.api_service(port=0)
    gw.services = [ingress, api]
    await gw.start()
    # one spooled message, so the queue operations reach their handlers with a real queue id
    await send(ingress.port("plain"), "shop", "x@example.net", 1)
    await wait_for(lambda: len(gw.events.events(type="accepted")) == 1)
    [accepted] = gw.events.events(type="accepted")
    (tmp_path / "schemathesis.toml").write_text(
        f'[parameters]\n"path.queue_id" = "{accepted.event.queue_id}"\n"path.domain" = "shop.example"\n'
    )
    command = [sys.executable, "-m", "schemathesis.cli"]  # the schemathesis of this interpreter's environment
    report = tmp_path / "report.json"
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            "run",
            api.url + "/api/v1/openapi.json",
            "-H",
            f"Authorization: Bearer {admin}",
            "--checks",
            CHECKS,
            "--max-examples",
            "8",
            "--workers",
            "1",
            "--seed",
            "12",
            "--no-shrink",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--exclude-operation-id",
            "testWebhook",
            "--generation-database",
            "none",
            "--generation-with-security-parameters",
            "false",
            "--request-timeout",
            "10",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
        text = out.decode("utf-8", "replace")
        assert proc.returncode == 0, text[-6000:]
        assert admin not in text  # schemathesis sanitises the header in its output; the API never echoes it
        summary = json.loads(report.read_text()) if report.exists() else {}
        assert "No issues found" in text or summary, text[-2000:]
    finally:
        await gw.stop(2.0)
        zone.close()
