"""A private Postfix instance for tests and benchmarks, and ``smtpgate milter`` as a child process.

Postfix gets its own ``config_directory``, ``queue_directory`` and ``data_directory`` under a
temporary directory, listens on 127.0.0.1 only (smtpd on a free port in its own master.cf), relays
everything to ``[127.0.0.1]:SINKPORT`` and optionally calls a milter. The Debian package's system
instance is never used or touched. ``stop`` runs ``postfix -c DIR stop`` and then kills the
master by its PID (``queue_directory/pid/master.pid``) if it is still there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MASTER_CF = """\
{smtpd_port} inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return os.path.exists(POSTFIX) and os.geteuid() == 0


class Postfix:
    """One private Postfix: ``start()``, send to ``127.0.0.1:port``, ``stop()``."""

    def __init__(self, sink_port: int, milter: str | None = None, **extra: str) -> None:
        # its own directory, not under pytest's tmp_path: Postfix's daemons run as "postfix" and
        # must traverse it (pytest's directories are mode 0700)
        self.base = Path(tempfile.mkdtemp(prefix="smtpgate-postfix-"))
        self.base.chmod(0o755)
        base = self.base
        self.config_dir = base / "etc"
        self.queue_dir = base / "queue"
        self.data_dir = base / "data"
        self.port = free_port()
        self.log = base / "maillog"
        self.sink_port = sink_port
        self.milter = milter
        self.extra = extra
        self.master_pid: int | None = None

    def main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(self.base),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mta.test",
            "mydomain": "test",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtputf8_enable": "no",
            "biff": "no",
            # what docs/milter.md asks of a signing milter's Postfix:
            "disable_mime_output_conversion": "yes",  # no 8bit -> quoted-printable after signing
            "local_header_rewrite_clients": "",  # no header rewriting for "local" clients
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "default_process_limit": "40",
        }
        if self.milter:
            settings.update(smtpd_milters=self.milter, milter_default_action="tempfail", milter_protocol="6")
        settings.update(self.extra)
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def start(self, timeout: float = 30.0) -> None:
        self.config_dir.mkdir(parents=True)
        self.queue_dir.mkdir()
        self.data_dir.mkdir()
        shutil.chown(self.data_dir, "postfix")
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(smtpd_port=f"127.0.0.1:{self.port}"))
        # Postfix checks that the configuration files are owned by root and not group/world writable
        run = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), "start"], capture_output=True, text=True, timeout=timeout
        )
        if run.returncode != 0:
            raise RuntimeError(f"postfix start failed: {run.stdout}{run.stderr}{self.read_log()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.master_pid = self._pid()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"postfix did not answer on port {self.port}: {self.read_log()}")

    def _pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def queue_is_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "maildrop"):
            d = self.queue_dir / sub
            if d.is_dir() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True

    def stop(self) -> None:
        pid = self.master_pid or self._pid()
        subprocess.run([POSTFIX, "-c", str(self.config_dir), "stop"], capture_output=True, timeout=30)
        if pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):  # the fallback: the master by its PID (its children follow it)
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class MilterProcess:
    """``smtpgate milter --listen inet:127.0.0.1:0`` in a child process; ``port`` read from its log."""

    def __init__(self, config: Path, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.app.cli",
                "milter",
                "--listen",
                "inet:127.0.0.1:0",
                "--config",
                str(config),
                *args,
            ],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        self.log_lines: list[str] = []
        self._port = threading.Event()
        self.port = 0
        self._reader = threading.Thread(target=self._drain, daemon=True)  # a full pipe would block the child
        self._reader.start()
        if not self._port.wait(30) or not self.port:
            self.proc.kill()
            raise RuntimeError("smtpgate milter did not start:\n" + "".join(self.log_lines))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line)
            m = re.search(r"milter listening on inet:127\.0\.0\.1:(\d+)", line)
            if m and not self.port:
                self.port = int(m.group(1))
                self._port.set()
        self._port.set()

    def stop(self) -> str:
        """SIGTERM, then the rest of its log (SIGKILL if it has not stopped within 10 s)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return "".join(self.log_lines)
