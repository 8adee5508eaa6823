"""Runs like a service: ``init`` then ``serve`` signs the first message, every log line of every
process is JSON, ``/metrics`` moves during deliveries, ``status`` and the admin commands find the
instance from anywhere, and systemd hears READY/WATCHDOG/STOPPING on its notify socket.

One real ``smtpgate serve`` subprocess (a worker process, real sockets on ephemeral ports set
through environment overrides, real SQLite files) carries the scenario; each assertion names the
behaviour it checks.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from pipeline.app.cli import main
from tests.support.smtp_sink import closed_port

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "pipeline.app.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without instance settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTPGATE_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Serve:
    """``smtpgate serve`` in a subprocess; its stderr lines arrive on a queue as they are written."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([*CLI, "serve"], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first new line matching ``pattern`` (every line read is kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"serve exited waiting for {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code


def scrape(url: str) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        content_type = resp.headers["Content-Type"]
        text = resp.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return content_type, samples


def send(port: int, key: str, rcpt: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = "news@example.com"
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg.set_content("Hello from the operations test.\n")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the gateway's self-signed certificate
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=context)
        client.login("apikey", key)
        client.send_message(msg)


def dkim_dns(zone: Path) -> Any:
    """A dkimpy DNS function answering from the records ``init`` told us to publish."""
    records = {}
    for line in zone.read_text().splitlines():
        m = re.match(r"(\S+\._domainkey\.\S+)\. IN TXT \( (.*) \)$", line)
        if m:
            records[m.group(1) + "."] = "".join(re.findall(r'"([^"]*)"', m.group(2))).encode()
    return lambda name, timeout=5: records.get(name.decode() if isinstance(name, bytes) else name)


@pytest.mark.slow
def test_init_then_serve_signs_logs_json_measures_and_is_found_from_anywhere(tmp_path, monkeypatch):
    home = tmp_path / "instance"
    home.mkdir()
    monkeypatch.chdir(home)
    for var in [k for k in os.environ if k.startswith("SMTPGATE_")]:
        monkeypatch.delenv(var)
    runner = CliRunner()
    result = runner.invoke(main, ["init", "--domain", "example.com", "--hostname", "mail.example.com"])
    assert result.exit_code == 0, result.output
    api_key = result.stdout.strip()
    assert len(api_key.splitlines()) == 1 and len(api_key) > 20  # the secret alone on stdout
    assert "_dmarc.example.com. IN TXT" in result.stderr and "bounces.example.com. IN MX 10 mail.example.com." in result.stderr
    assert "_domainkey.example.com. IN TXT" in result.stderr and "v=spf1" in result.stderr
    # a second credential whose egress is a closed port: its message stays deferred in the queue
    with (home / "smtpgate.toml").open("a") as fh:
        fh.write(f'\n[egresses.hold]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {closed_port()}\ntls = "none"\n')
    held = runner.invoke(main, ["credentials", "add", "held", "--egress", "hold"])
    assert held.exit_code == 0, held.output
    held_key = held.stdout.strip()

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # what systemd listens on for Type=notify
    notify.bind(str(tmp_path / "notify.sock"))
    notified: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [notified.put(notify.recv(4096).decode()) for _ in iter(int, 1)],
                     daemon=True).start()
    env = clean_env(
        SMTPGATE_LISTENERS__0__PORT="0", SMTPGATE_LISTENERS__1__PORT="0", SMTPGATE_TRACKING__LISTEN_PORT="0",
        SMTPGATE_API__LISTEN_PORT="0",
        SMTPGATE_GATEWAY__LOG_FORMAT="json", SMTPGATE_SPOOL__WORKERS="1", SMTPGATE_SPOOL__RETRY_MIN="3600",
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000",
    )
    serve = Serve(home, env)  # finds ./smtpgate.toml as every command does
    try:
        port = int(serve.wait_for(r"smtp listener submission: 127\.0\.0\.1:(\d+)").group(1))
        url = serve.wait_for(r"tracking: (http://127\.0\.0\.1:\d+)").group(1)
        serve.wait_for("smtpgate running")
        states = [notified.get(timeout=30) for _ in range(2)]
        assert states[0].startswith("READY=1\n") and f"MAINPID={serve.proc.pid}" in states[0]
        assert states[1] == "WATCHDOG=1"
        summary = "\n".join(serve.lines)
        assert "dkim: example.com (selector s" in summary and "UNSIGNED" not in summary
        assert f"data dir: {home / 'smtpgate-data'}" in summary and "egress: maildir" in summary
        assert "chain: header_validation -> " in summary and "hostname: mail.example.com" in summary

        content_type, before = scrape(url)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert sum(before["smtpgate_queue_recipients"].values()) == 0
        assert before["smtpgate_delivery_latency_seconds_count"][()] == 0

        send(port, api_key, "first@example.net", "first")
        serve.wait_for(r"to=<first@example\.net>.*status=sent")
        [delivered] = list((home / "smtpgate-data" / "maildir" / "new").iterdir())
        signed = delivered.read_bytes()
        assert signed.startswith(b"DKIM-Signature:") or b"\nDKIM-Signature:" in signed
        assert dkim.verify(signed, dnsfunc=dkim_dns(home / "smtpgate-data" / "dns-records.zone"))

        send(port, held_key, "held@example.net", "held")
        serve.wait_for(r"to=<held@example\.net>.*status=deferred")
        _, after = scrape(url)
        assert after["smtpgate_queue_recipients"][(("state", "deferred"),)] == 1
        assert after["smtpgate_queue_oldest_age_seconds"][()] > 0
        assert after["smtpgate_delivery_latency_seconds_count"][()] == 1
        assert 0 < after["smtpgate_delivery_latency_seconds_sum"][()] < 60
        signs = [v for k, v in after["smtpgate_plugin_latency_seconds_count"].items()
                 if dict(k) == {"phase": "on_sign", "plugin": "dkim_sign"}]
        assert signs == [2.0]  # measured in the worker process, observed in the main one
        assert after["smtpgate_store_commit_seconds_count"][(("store", "spool"),)] == 2
        assert after["smtpgate_smtp_connections_total"][(("result", "accepted"),)] == 2
        assert after["smtpgate_events_total"][(("type", "delivered"),)] == 1

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        cli_env = clean_env(SMTPGATE_CONFIG=str(home / "smtpgate.toml"))
        status = subprocess.run([*CLI, "status"], cwd=elsewhere, env=cli_env, capture_output=True, text=True)
        assert status.returncode == 0, status.stderr
        assert f"smtpgate is running: pid {serve.proc.pid}, up " in status.stdout
        assert "queue: 1 message(s), 1 recipient(s): deferred 1" in status.stdout
        assert re.search(r"last delivery error: .*to=<held@example\.net>, status=deferred", status.stdout)
        assert f"data dir {home / 'smtpgate-data'}" in status.stderr
        listed = subprocess.run([*CLI, "queue", "list"], cwd=elsewhere, env=cli_env, capture_output=True, text=True)
        assert listed.returncode == 0 and "held@example.net" in listed.stdout
        lost = subprocess.run([*CLI, "queue", "list"], cwd=elsewhere, env=clean_env(), capture_output=True, text=True)
        assert lost.returncode == 1 and "no instance" in lost.stderr and "Traceback" not in lost.stderr
        assert not (elsewhere / "smtpgate-data").exists()
    finally:
        code = serve.stop()
    assert code == 0
    rest = []
    while not notified.empty():
        rest.append(notified.get())
    assert "STOPPING=1" in rest and rest.count("WATCHDOG=1") >= 2  # pinged every WATCHDOG_USEC / 2

    records = [json.loads(line) for line in serve.lines]  # every line of every process parses
    assert all({"time", "level", "logger", "pid", "queue_id", "message"} <= r.keys() for r in records)
    workers = {r["pid"] for r in records if r["message"].startswith("worker ready")}
    assert workers and serve.proc.pid not in workers
    sent = [r for r in records if "status=sent" in r["message"]]
    assert sent and all(r["queue_id"] and r["message"].startswith(r["queue_id"] + ": ") for r in sent)
    assert not (home / "smtpgate-data" / "smtpgate.pid").exists()
    stopped = subprocess.run([*CLI, "status"], cwd=home, env=clean_env(), capture_output=True, text=True)
    assert stopped.returncode == 3 and "smtpgate is not running" in stopped.stdout


@pytest.mark.slow
def test_serve_on_embedded_defaults_says_loudly_that_mail_goes_out_unsigned(tmp_path):
    env = clean_env(SMTPGATE_LISTENERS__0__PORT="0", SMTPGATE_LISTENERS__1__PORT="0",
                    SMTPGATE_TRACKING__LISTEN_PORT="0", SMTPGATE_API__LISTEN_PORT="0", SMTPGATE_SPOOL__WORKERS="0",
                    SMTPGATE_GATEWAY__HOSTNAME="localhost")
    serve = Serve(tmp_path, env)
    try:
        serve.wait_for("smtpgate running")
    finally:
        assert serve.stop() == 0
    text = "\n".join(serve.lines)
    assert re.search(r"WARNING smtpgate\[\d+\]: dkim: NO KEY CONFIGURED: mail goes out UNSIGNED.*"
                     r"fix it with: smtpgate init --domain example\.com", text)
    assert re.search(r"WARNING smtpgate\[\d+\]: hostname: localhost: ", text)
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d INFO smtpgate\.", text, re.M)
