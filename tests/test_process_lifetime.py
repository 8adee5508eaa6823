"""No process outlives the gateway: after SIGTERM to the whole process group (systemd
``KillMode=control-group``, ``timeout``, supervisors) and after SIGKILL of the main process, the
processing workers (the gateway's only child processes) exit.

Each test starts ``python -m pipeline.app.cli serve`` with two workers in its own process group,
waits until it runs, lists every process of the group from ``/proc``, signals, and polls
``/proc`` until each listed pid is gone (a zombie counts as gone: here PID 1 may not reap).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

CONFIG = """
[gateway]
hostname = "gw.test"
data_dir = "{data_dir}"

[[listeners]]
name = "plain"
address = "127.0.0.1"
port = 0
tls = "none"
require_tls = false

[egress]
type = "null"

[tracking]
listen_port = 0

[api]
listen_port = 0
"""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live process, ``None`` when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp ...
    return fields[0], int(fields[2])


def group_members(pgid: int) -> set[int]:
    """Every live (not zombie) process whose process group is ``pgid``."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == pgid and st[0] != "Z":
                out.add(int(entry.name))
    return out


def alive(pids: set[int]) -> set[int]:
    left = set()
    for pid in pids:
        st = _stat(pid)
        if st is not None and st[0] != "Z":
            left.add(pid)
    return left


def start_gateway(
    tmp_path: Path, command: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], set[int], Path]:
    """``command serve`` (default ``python -m pipeline.app.cli``) with two workers, running."""
    config = tmp_path / "smtpgate.toml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "data"))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "pipeline.app.cli"]), "serve", "--config", str(config),
             "--workers", "2"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    deadline = time.monotonic() + 60
    while b"smtpgate running" not in log.read_bytes():  # the pool waits for every worker's ready frame first
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    children = group_members(proc.pid) - {proc.pid}
    # the 2 workers and nothing else: no forkserver, no resource tracker
    assert len(children) == 2, (children, log.read_text())
    return proc, children, log


def stop_gateway(proc: subprocess.Popen[bytes], children: set[int]) -> None:
    """Clean-up after a test: the gateway's process group killed if still running, any child left killed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in alive(children):
        os.kill(pid, signal.SIGKILL)


def assert_all_exit(children: set[int], log: Path, bound: float = 20.0) -> float:
    """Poll /proc until every child is gone; how long it took."""
    t0 = time.monotonic()
    while alive(children):
        assert time.monotonic() - t0 < bound, f"still running after {bound} s: {alive(children)}\n{log.read_text()}"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_workers_exit_after_sigkill_of_the_main_process(tmp_path: Path) -> None:
    proc, children, log = start_gateway(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert_all_exit(children, log)  # the kernel kills them (PR_SET_PDEATHSIG): they have no time to log
    finally:
        stop_gateway(proc, children)


def test_every_process_exits_after_sigterm_to_the_process_group(tmp_path: Path) -> None:
    proc, children, log = start_gateway(tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert_all_exit(children, log)
        assert "received SIGTERM: draining" in log.read_text()
    finally:
        stop_gateway(proc, children)
