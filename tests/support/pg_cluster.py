"""A private PostgreSQL cluster for the tests: ``initdb`` in a temporary directory, ``pg_ctl start``
on a free 127.0.0.1 port (and a Unix socket in the same directory), stopped by PID at the end.

Why not the machine's own server: the tests must not depend on (or disturb) a system service,
and CI starts from a fresh clone with only Debian's ``postgresql`` package installed (``.ci/run``
installs it). Each test gets its own database, created from a template, so tests stay independent.
As root, ``initdb`` refuses to run, so the cluster belongs to the ``postgres`` system user that
the Debian package creates, and every server command runs as that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from itertools import count
from pathlib import Path


def pg_bin() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (PATH first, else Debian's newest version)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (bash .ci/run installs Debian's postgresql)")
    return Path(versions[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One running cluster; :meth:`new_database` hands out a fresh database per test."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="smtpgate-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.pid: int | None = None
        self._serial = count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: the cluster (and its temp dir) belong to "postgres".
            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as_user, *argv], check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        for attempt in range(3):
            opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                    "-c fsync=on -c synchronous_commit=on -c shared_buffers=32MB")
            try:
                self._run(str(self.bin / "pg_ctl"), "start", "-D", str(self.data), "-w", "-t", "60",
                          "-l", str(self.root / "server.log"), "-o", opts)
                break
            except subprocess.CalledProcessError:
                # the free port was taken before the postmaster bound it (another test process,
                # pytest-xdist): try another one
                if attempt == 2 or "Address already in use" not in self._log():
                    raise
                self.port = free_port()
        # The postmaster's PID is the first line of postmaster.pid: we stop exactly that process.
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self.admin("CREATE DATABASE smtpgate_template")

    def _log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE) on the maintenance db."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self) -> str:
        """A fresh, empty database (a copy of ``smtpgate_template``); its URL."""
        name = f"t{os.getpid()}_{next(self._serial)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE smtpgate_template")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Fast shutdown of the postmaster by PID (SIGINT), then the temporary directory goes."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.05)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
