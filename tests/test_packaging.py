"""The systemd unit is valid and declares what a service needs; the notify protocol reaches a real
AF_UNIX datagram socket (path and abstract), and never blocks when nobody reads it."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.app import systemd

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "systemd" / "smtpgate.service"


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, in order (a key may repeat, as SystemCallFilter does)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (no systemd)")
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart's program exists: point it at this interpreter, keep everything else
    unit = tmp_path / "smtpgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/smtpgate/bin/smtpgate", sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "smtpgate.service" not in result.stderr, result.stderr  # no warning about our unit


def test_the_unit_is_a_notify_service_with_watchdog_mixed_kill_low_ports_and_hardening():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"] and int(s["WatchdogSec"][0]) > 0
    assert s["KillMode"] == ["mixed"] and s["ExecStart"][0].endswith("smtpgate serve --config /etc/smtpgate/smtpgate.toml")
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"] == s["CapabilityBoundingSet"]
    assert s["User"] == ["smtpgate"] and s["StateDirectory"] == ["smtpgate"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"] and "@system-service" in s["SystemCallFilter"]
    assert s["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_sends_each_state_as_one_datagram(tmp_path, monkeypatch, abstract):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"\0smtpgate-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    server.bind(name)
    server.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name[1:] if abstract else name)
    try:
        assert systemd.notify("READY=1\nSTATUS=accepting mail")
        assert systemd.notify("STOPPING=1")
        assert server.recv(4096) == b"READY=1\nSTATUS=accepting mail"
        assert server.recv(4096) == b"STOPPING=1"
    finally:
        server.close()


def test_notify_is_a_no_op_outside_systemd_and_never_blocks_on_a_full_socket(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    try:
        sent = 0
        while systemd.notify("WATCHDOG=1"):  # nobody reads: the queue fills, then notify gives up at once
            sent += 1
            assert sent < 100_000
        assert sent > 0
    finally:
        server.close()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.notify("READY=1") is False  # a missing socket is a warning, not a crash


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_process(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0
