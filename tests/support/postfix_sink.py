"""Postfix's ``smtp-sink`` on a free loopback port, and what its EHLO offers (tests and benchmarks).

The Debian ``postfix`` package ships it; the daemon itself is never started.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def start_smtp_sink(*args: str, backlog: int = 64, timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], int]:
    """``smtp-sink -u nobody ARGS 127.0.0.1:PORT BACKLOG`` once it accepts connections: (process, port).
    The caller stops the process (``terminate`` then ``wait``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", *args, f"127.0.0.1:{port}", str(backlog)])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return sink, port
        except OSError:
            time.sleep(0.02)
    sink.kill()
    sink.wait()
    raise RuntimeError(f"smtp-sink did not accept connections on port {port} within {timeout:.0f} s")


def offers_pipelining(port: int) -> bool:
    """Whether the SMTP server on ``port`` lists PIPELINING in its EHLO reply."""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(b"EHLO probe\r\n")
        f.flush()
        lines = [f.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(f.readline())
        f.write(b"QUIT\r\n")
        f.flush()
    return any(line[4:].strip().upper() == b"PIPELINING" for line in lines)
