"""What an operator needs to know about a running instance: the start-up summary ``serve`` logs,
and the pid file (``<data_dir>/smtpgate.pid``) that ``smtpgate status`` reads.

The summary says where everything is (config, data directory, listeners, tracking and API URLs,
egress) and what will happen to mail (DKIM domains and selectors, the chain), and warns loudly
about what a newcomer would otherwise find out from a recipient: unsigned mail and a
``localhost`` hostname.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.app.gateway import Gateway
from pipeline.config import Config

PID_FILE = "smtpgate.pid"
INIT_HINT = "smtpgate init --domain example.com"  # the one command that makes a signing instance


def egress_summary(config: Config) -> str:
    """Where final copies go, in one phrase."""
    e = config.egress
    if e.type == "smtp":
        return f"smtp smarthost {e.host}:{e.port} (tls={e.tls})"
    if e.type == "mx":
        return "mx (direct delivery to each recipient domain's MX)"
    if e.type == "null":
        return "null (accepted and discarded)"
    return f"maildir {(e.maildir or config.data_dir / 'maildir').absolute()} (nothing leaves this machine)"


def dkim_summary(plugins: list[Any]) -> tuple[bool, list[str]]:
    """(the chain has a DKIM signer, its ``domain (selectors)`` list) read from the loaded plugin."""
    for p in plugins:
        if p.name != "dkim_sign":
            continue
        domains = getattr(getattr(p.instance, "config", None), "domains", {}) or {}
        out = []
        for domain, key in sorted(domains.items()):
            selectors = [s for s in (getattr(key, "selector", None), getattr(key, "ed25519_selector", None)) if s]
            out.append(f"{domain} (selector {', '.join(selectors)})")
        return True, out
    return False, []


def startup_summary(gateway: Gateway) -> list[tuple[int, str]]:
    """(level, line) pairs logged once the services listen (bound ports, not requested ones)."""
    config: Config = gateway.config
    lines: list[tuple[int, str]] = []
    host = config.gateway.hostname
    if host in ("localhost", "localhost.localdomain") or "." not in host:
        lines.append((logging.WARNING, f"hostname: {host}: greetings and Message-IDs say {host}; set [gateway] "
                                        "hostname (or SMTPGATE_GATEWAY__HOSTNAME) to this server's public name"))
    else:
        lines.append((logging.INFO, f"hostname: {host}"))
    lines.append((logging.INFO, f"config: {config.source}"))
    lines.append((logging.INFO, f"data dir: {config.data_dir.absolute()}"))
    for service in gateway.services:
        for name, (address, port) in sorted(getattr(service, "bound", {}).items()):
            listener = next((li for li in config.listeners if (li.name or f"{li.address}:{li.port}") == name), None)
            tls = f"tls={listener.tls}" if listener else ""
            lines.append((logging.INFO, f"smtp listener {name}: {address}:{port} {tls}".rstrip()))
        url = getattr(service, "url", None) if service.name == "tracking" else None
        if url:
            lines.append((logging.INFO, f"tracking: {url} (public links: {config.tracking.base_url})"))
            lines.append((logging.INFO, f"api: {url}/stats {url}/api/stats {url}/metrics"))
        api_url = getattr(service, "url", None) if service.name == "api" else None
        if api_url:  # the bound port: with listen_port = 0 this line is the only place it shows
            console = f" console: {api_url}/console/" if config.api.console else ""
            lines.append((logging.INFO, f"management api: {api_url}/api/v1{console}"))
    lines.append((logging.INFO, f"egress: {egress_summary(config)}"))
    has_signer, domains = dkim_summary(gateway.plugins.plugins)
    if has_signer and config.features.get("dkim", True) and domains:
        lines.append((logging.INFO, f"dkim: {'; '.join(domains)}"))
    elif has_signer and config.features.get("dkim", True):
        lines.append((logging.WARNING, "dkim: NO KEY CONFIGURED: mail goes out UNSIGNED and will be "
                                        f"spam-foldered or refused; fix it with: {INIT_HINT}"))
    else:
        lines.append((logging.WARNING, "dkim: signing is off ([chain] plugins or [features] dkim): mail goes out unsigned"))
    chain = " -> ".join(p.name for p in gateway.plugins.plugins) or "empty"
    lines.append((logging.INFO, f"chain: {chain}"))
    return lines


@dataclass
class PidInfo:
    pid: int
    started: float
    running: bool


def write_pid_file(data_dir: Path) -> Path:
    """``<pid>\\n<start time>\\n``, written atomically (a reader never sees half a file)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / PID_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n{time.time():.3f}\n")
    tmp.replace(path)
    return path


def remove_pid_file(data_dir: Path) -> None:
    """Remove the pid file if it is ours (a second instance started by mistake must not remove it)."""
    path = data_dir / PID_FILE
    try:
        if path.read_text().split()[:1] == [str(os.getpid())]:
            path.unlink()
    except OSError:
        pass


def read_pid_file(data_dir: Path) -> PidInfo | None:
    """The pid file's content and whether that process still runs (a stale file says not)."""
    try:
        pid_text, started_text = (data_dir / PID_FILE).read_text().split()[:2]
        pid, started = int(pid_text), float(started_text)
    except (OSError, ValueError):
        return None
    return PidInfo(pid, started, _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs as another user (the smtpgate service user)
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # a recycled pid belongs to some other program
        try:
            return b"smtpgate" in cmdline.read_bytes() or b"pipeline.app.cli" in cmdline.read_bytes()
        except OSError:
            return True
    return True
