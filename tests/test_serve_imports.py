"""A started SQLite ``smtpgate serve`` carries no code it does not run: psycopg (a PostgreSQL
store's driver, about 12 MiB) is never loaded, and Jinja2 only once someone opens the console,
which then works.

What the process loaded is read where the kernel shows it, ``/proc/PID/maps``: psycopg comes
with ``psycopg_binary``'s shared objects (libpq) and Jinja2 with MarkupSafe's ``_speedups``
extension, so neither can be present without being mapped. One real ``serve`` subprocess (real
sockets on ephemeral ports, real SQLite files, a real worker process).
"""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

import pytest

from tests.test_operations import Serve, clean_env

CONFIG = """
[gateway]
data_dir = "{data_dir}"
hostname = "gw.example.net"

[[listeners]]
name = "test"
address = "127.0.0.1"
port = 0
tls = "none"
require_tls = false

[tracking]
listen_port = 0
keys = {{ k1 = "test-secret" }}
base_url = "https://t.example.net"

[api]
listen_port = 0

[spool]
workers = 1
"""


def mapped_files(pid: int) -> set[str]:
    """The files mapped into process ``pid`` (its shared objects among them)."""
    return {line.split(maxsplit=5)[5].strip() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6}


def loaded(files: set[str], package: str) -> list[str]:
    return sorted(f for f in files if f"/{package}/" in f or f"/{package}.libs/" in f)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc/PID/maps")
def test_sqlite_serve_loads_no_psycopg_and_jinja2_only_when_the_console_is_opened(tmp_path: Path) -> None:
    config = tmp_path / "smtpgate.toml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "data"))
    serve = Serve(tmp_path, clean_env(SMTPGATE_CONFIG=str(config)))
    try:
        api = serve.wait_for(r"management api: (http://\S+)/api/v1 console: \S+/console/").group(1)
        serve.wait_for("smtpgate running")
        pid = serve.proc.pid

        before = mapped_files(pid)
        assert loaded(before, "psycopg_binary") == [], "a SQLite gateway loaded psycopg"
        assert loaded(before, "markupsafe") == [], "Jinja2 was loaded before anyone opened the console"

        with urllib.request.urlopen(f"{api}/console/sign-in", timeout=30) as resp:
            page = resp.read().decode()
        assert resp.status == 200
        assert re.search(r"<form[^>]+action=\"/console/sign-in\"", page), page[:500]

        after = mapped_files(pid)
        assert loaded(after, "markupsafe"), "the console rendered its page without Jinja2's MarkupSafe?"
        assert loaded(after, "psycopg_binary") == []
    finally:
        assert serve.stop() == 0
