"""What crosses to a processing worker, and what a worker carries.

A worker reads the message bytes from the spool itself (issue 17 item 4): per message only the
context record, the envelope and the length go through the pipe, whatever the message's size;
the bytes it reads are checked against the claim, and a message it cannot read is a temporary
failure, logged with its queue id. A worker imports what processing needs (item 6): not the
HTTP services, the CLI, the metrics library or the PostgreSQL driver, and not the parent's
``__main__`` (``smtpgate serve`` and ``python -m pipeline.app.cli`` import all of those).
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from pipeline.app.gateway import Gateway
from pipeline.config.loading import parse_config
from pipeline.contract.context import MessageContext
from pipeline.contract.message import Message
from pipeline.delivery import workers
from pipeline.delivery.workers import IdleTrim, SpoolReader, SpoolSource, loaded_modules
from tests.support.smtp_sink import EventRecorder, smtp_egress
from tests.test_delivery import enqueue, start_service, stop
from tests.test_process_lifetime import start_gateway, stop_gateway

pytestmark = pytest.mark.slow  # worker processes

BIG = (
    b"From: app@example.org\r\nTo: someone@example.net\r\nSubject: big\r\n\r\n"
    + b"".join(b"line %06d of a long text body, delivered byte for byte\r\n" % i for i in range(5000))
)  # about 290 KB

NOT_IN_A_WORKER = (
    "aiohttp", "aiosmtpd", "click", "jinja2", "prometheus_client", "psycopg", "psycopg_pool", "requests",
    "urllib3", "pipeline.api", "pipeline.app", "pipeline.ingress", "pipeline.tracking", "pipeline.milter",
)


@pytest.fixture(autouse=True)
def _events():
    EventRecorder.reset()
    yield
    EventRecorder.reset()


def _count_sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of every frame the pool sends to its workers from now on."""
    sizes: list[int] = []
    real = workers._frame

    def frame(task_id: int, kind: int, payload: bytes) -> bytes:
        out = real(task_id, kind, payload)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(workers, "_frame", frame)
    return sizes


async def test_a_worker_gets_the_queue_id_and_reads_the_bytes_from_the_spool(sinks, data_dir, monkeypatch):
    controller, sink = sinks()
    gw, svc = await start_service(data_dir, egress=smtp_egress(controller.port), workers=1)
    sent = _count_sent(monkeypatch)
    try:
        for i in range(3):
            await enqueue(gw, [f"r{i}@example.net"], raw=BIG)
        await EventRecorder.until(lambda: len(EventRecorder.of("delivered")) == 3, timeout=30)
    finally:
        await stop(gw, svc)
    assert len(sent) >= 3
    assert max(sent) < 4096, sent  # the message is 290 KB; the record and envelope are what crosses
    body = BIG.split(b"\r\n\r\n", 1)[1]
    assert len(sink.messages) == 3
    assert all(m.data.replace(b"\r\n", b"\n").endswith(body.replace(b"\r\n", b"\n")) for m in sink.messages)


async def test_a_message_the_worker_cannot_read_is_deferred_and_logged_with_its_queue_id(data_dir, tmp_path, caplog):
    other = tmp_path / "other.db"  # a spool without the message: as if its row had gone
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE messages (queue_id TEXT PRIMARY KEY, data BLOB)")
    gw, svc = await start_service(data_dir, egress={"type": "null"}, workers=0)
    await svc.stop(0)
    svc.pool.workers = 1
    svc.pool.source = SpoolSource("sqlite", str(other))
    caplog.set_level(logging.ERROR, logger="smtpgate.delivery")
    await svc.start()
    try:
        qid = await enqueue(gw, ["x@example.net"])
        await EventRecorder.until(lambda: bool(EventRecorder.of("deferred")), timeout=30)
    finally:
        await stop(gw, svc)
    # every attempt (a retry may start before the service stops) is deferred the same way
    deferrals = EventRecorder.of("deferred")
    assert deferrals and all(
        d.queue_id == qid and d.data["reply"].startswith("451 4.3.0 processing failed: LookupError")
        for d in deferrals)
    assert EventRecorder.of("delivered") == []
    assert any(qid in r.getMessage() and "not in the spool" in r.getMessage() for r in caplog.records)


async def test_a_worker_imports_neither_the_web_services_nor_the_cli_nor_the_database_driver(data_dir):
    config = parse_config({"gateway": {"data_dir": str(data_dir)}, "egress": {"type": "null"}}, "<test>")
    gw = Gateway(config)  # the default chain, every built-in plugin
    svc = gw.delivery_service(workers=1)
    await svc.start()
    try:
        modules = await svc.pool.call(loaded_modules)
    finally:
        await stop(gw, svc)
    assert {"pipeline.chain.processing", "plugins.css_inline", "plugins.click_tracking"} <= set(modules)
    loaded = {m for m in modules for bad in NOT_IN_A_WORKER if m == bad or m.startswith(bad + ".")}
    assert loaded == set()


def _shared_objects(pid: int) -> set[str]:
    """File names of the shared libraries mapped into a process (C extension modules included)."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
        if ".so" in path:
            names.add(path)
    return names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_serve_workers_do_not_load_the_parents_main_module(tmp_path: Path) -> None:
    """``smtpgate serve`` (a console script: ``__main__`` is a file): multiprocessing would run
    that file, so import the CLI (and with it aiohttp, the API, the console) in every worker as
    ``__mp_main__``; a worker is a fresh ``python -m pipeline.delivery.worker_main``."""
    script = tmp_path / "smtpgate"  # what pip writes for the console script
    script.write_text("import sys\nfrom pipeline.app.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    proc, children, log = start_gateway(tmp_path, [sys.executable, str(script)])
    try:
        workers = [p for p in children if "pipeline.delivery.worker_main" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) == 2, log.read_text()
        # Each worker logs this once its chain is built: lxml comes with the HTML plugins then, not
        # with pipeline.toolkit (which imports its names on first use).
        deadline = time.monotonic() + 60
        while log.read_text().count("worker ready:") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        main_libs = _shared_objects(proc.pid)
        assert any("/aiohttp/" in lib for lib in main_libs)  # the main process serves HTTP
        for pid in workers:
            libs = _shared_objects(pid)
            assert any("/lxml/" in lib for lib in libs)  # the processing chain is loaded
            web = [lib for lib in libs if any(f"/{pkg}/" in lib for pkg in ("aiohttp", "multidict", "yarl",
                                                                           "markupsafe", "psycopg_binary"))]
            assert web == [], web
    finally:
        stop_gateway(proc, children)


async def test_the_worker_reader_reads_both_backends_checks_the_length_and_survives_a_dropped_connection(backend):
    spool = backend.spool()
    ctx = MessageContext(message=Message(BIG, "app@example.org", ["x@example.net"]))
    await spool.enqueue(ctx, BIG, ["x@example.net"])
    source = (SpoolSource("postgres", backend.url) if backend.url else
              SpoolSource("sqlite", str(backend.config.data_dir / "spool.db")))
    reader = SpoolReader(source)
    try:
        assert reader.read(ctx.queue_id, len(BIG)) == BIG
        with pytest.raises(ValueError, match="the spool holds"):
            reader.read(ctx.queue_id, len(BIG) + 1)
        with pytest.raises(LookupError):
            reader.read("no-such-id", 1)
        if backend.url:  # a PostgreSQL restart drops the worker's connection: the next read reconnects
            import psycopg

            assert reader.read(ctx.queue_id, len(BIG)) == BIG
            with psycopg.connect(backend.url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (reader._conn.info.backend_pid,))
            assert reader.read(ctx.queue_id, len(BIG)) == BIG
    finally:
        reader.close()
        spool.close()


def test_a_worker_trims_its_heap_once_per_idle_spell_never_while_busy():
    trims: list[int] = []
    idle = IdleTrim(lambda: trims.append(1), after=1.0)
    assert not idle.tick(100.0)  # no message yet: nothing was freed
    idle.last_done = 100.0
    assert not idle.tick(100.5)  # idle for less than a second
    idle.busy = True
    assert not idle.tick(105.0)  # a message in hand
    idle.busy = False
    assert idle.tick(105.0) and trims == [1]
    assert not idle.tick(110.0)  # once per idle spell
    idle.last_done = 111.0
    assert idle.tick(112.0) and trims == [1, 1]
