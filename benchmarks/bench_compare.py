"""smtpgate beside reference servers started in the same run: ratios, not absolute claims.

    python benchmarks/bench_compare.py [--tree PATH ...] [--rounds 3] [--only ingress e2e memory]

Absolute msg/s move 20-35 % between machines (and minute to minute on a shared one); a ratio to a
reference measured in the same run, interleaved round by round, is what another machine can
reproduce. ``--tree`` (repeatable; default this tree) runs ``smtpgate serve`` from each source
tree, so one run gives before/after tables (e.g. ``--tree ../baseline --tree .``).

(a) ingress: Postfix's ``smtp-source`` (C, one connection per message) sends 10 KB and 60 KB
    messages over 1, 10 and 50 parallel sessions to
    - Haraka 3 accepting and discarding (installed with npm into ``~/.cache/smtpgate-bench/haraka``
      on first use; skipped with a message when npm or the install is unavailable),
    - a private Postfix (run as root with Debian's ``postfix`` package; skipped with a message
      otherwise): durable like smtpgate (cleanup fsyncs each queue file before the 250), then
      the discard transport; each measurement waits for its queue to empty,
    - a bare aiosmtpd server whose DATA handler only answers 250 (``bench_ingress.serve_bare``),
    - ``smtpgate serve`` per tree: the default chain's admission plugins, durable spool, the
      processing chain empty, null egress, delivery running;
    - with ``--ingress-alone``, also each tree's ingress service on its own (the same config, no
      delivery service in the process): the difference is what delivery in the same process costs
      the ingress (its spool only grows; CPU is read once the last 250 came).
    Printed: msg/s and each round's ratio smtpgate / reference (min / median / max over rounds),
    and smtpgate's CPU ms per message (main process and workers, utime + stime from /proc, from
    before the run until delivery has emptied the spool), then each smtpgate's CPU over
    ``--idle-seconds`` of doing nothing (all trees in the same window).
(b) end to end: ``smtpgate serve`` per tree with the full default chain (every feature, the
    css_inline engine or ``--engines css_inline premailer``, RSA-2048 DKIM) relaying to Postfix's
    ``smtp-sink``; ``size-typical.eml`` with 1, 10 and 100 recipients per transaction, the same
    HTML in every message (shared template) and different HTML in every message (unique). Printed: copies/s, and server CPU per copy
    split main process / worker processes (utime + stime of the process tree from /proc,
    before and after: CPU time, not wall time, answers "what does a copy cost" on a busy machine).
(c) memory: RSS of each server's process tree, idle after its warm-up: smtpgate with the full
    chain (main + workers) and with the admission-only chain, Haraka, bare aiosmtpd; read a few
    seconds after the run, and again once every server has been idle for ``--idle-memory-seconds``
    (default 65: longer than smtpgate's ``[spool] worker_max_idle``, 60 s by default, after which
    a tree that has the setting has stopped its idle workers; an older tree keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiosmtplib  # noqa: E402
import bench_end_to_end as e2e  # noqa: E402
import bench_ingress as ingress  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SMTPGATE_BENCH_CACHE", Path.home() / ".cache" / "smtpgate-bench"))
HARAKA = CACHE / "haraka"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ADMISSION_PLUGINS = [  # the default chain's plugins that only have admission hooks
    "header_validation",
    "campaign_tag",
    "sendgrid_smtpapi",
    "mailgun_headers",
    "postmark_headers",
    "ses_headers",
    "mailerq_headers",
    "suppression",
]


# -- /proc -------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every live thread of one process (/proc/PID/task/*/schedstat): the
    scheduler's clock, not the 10 ms ticks of utime/stime, so a mostly idle process is measurable."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def rss_mib(pid: int) -> float:
    """Resident set size of one process in MiB (/proc/PID/statm)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except OSError:
        return 0.0


def pss_mib(pid: int) -> float:
    """Proportional set size of one process in MiB (/proc/PID/smaps_rollup); 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def role(pid: int, main: int) -> str:
    """What a process of a server's tree is, from its command line (multiprocessing's helpers)."""
    if pid == main:
        return "main"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"
    if "resource_tracker" in cmd:
        return "tracker"
    if "pipeline.delivery.worker_main" in cmd:
        return "worker"
    if "forkserver" in cmd:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return "forkserver" if int(stat[1]) == main else "worker"
    return "child"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_banner(port: int, what: str, proc_alive: Callable[[], bool], timeout: float = 60) -> None:
    """Until ``port`` answers with a 220 greeting (a benchmark may poll; tests never do)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc_alive():
            raise RuntimeError(f"{what} exited before listening")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            if line.startswith(b"220"):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    """One SMTP server under test: its name, port, main pid and how to stop it."""

    name: str
    port: int
    pid: int
    stop: Callable[[], Awaitable[None]]
    log: list[str] = field(default_factory=list)
    spool: Path | None = None  # smtpgate's spool.db: delivery is done when its queue is empty
    measured: bool = False  # smtpgate without delivery: its CPU is read when the client is done
    settle: Callable[[], Awaitable[None]] | None = None  # a server with a queue: until it is empty

    @property
    def smtpgate(self) -> bool:
        """Whether this is an smtpgate server (its CPU per message is printed)."""
        return self.spool is not None or self.measured

    def cpu(self) -> dict[int, float]:
        return {p: cpu_seconds(p) for p in process_tree(self.pid)}

    def rss(self) -> tuple[float, float]:
        """(main process, children) RSS in MiB."""
        pids = process_tree(self.pid)
        return rss_mib(pids[0]), sum(rss_mib(p) for p in pids[1:])

    def per_process(self) -> str:
        """Each process of the tree: its role and RSS / PSS in MiB (PSS splits pages shared with
        the forkserver or a sibling between them, so the PSS column adds up to the tree's memory)."""
        pids = process_tree(self.pid)
        by_role: dict[str, list[tuple[float, float]]] = {}
        for p in pids:
            by_role.setdefault(role(p, self.pid), []).append((rss_mib(p), pss_mib(p)))
        parts = []
        for name, mem in by_role.items():
            if len(mem) <= 3:
                parts += [f"{name} {rss:.0f}/{pss:.0f}" for rss, pss in mem]
            else:  # Postfix: dozens of smtpd and cleanup processes, summed per role
                parts.append(f"{len(mem)} x {name} {sum(m[0] for m in mem):.0f}/{sum(m[1] for m in mem):.0f}")
        pss = sum(pss_mib(p) for p in pids)
        return ", ".join(parts) + f"; PSS total {pss:.0f}"


def haraka_available() -> str | None:
    """The haraka executable, installing Haraka 3 into the cache on first use; None (and why,
    printed) when npm or the install is not available."""
    exe = HARAKA / "node_modules" / ".bin" / "haraka"
    if exe.exists():
        return str(exe)
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        print("Haraka: skipped (npm/node not on PATH)")
        return None
    HARAKA.mkdir(parents=True, exist_ok=True)
    print(f"Haraka: npm install Haraka@3 into {HARAKA} (first run only)", flush=True)
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(HARAKA), "Haraka@3"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not exe.exists():
        print(f"Haraka: skipped (npm install failed: {result.stderr.strip().splitlines()[-1:]})")
        return None
    return str(exe)


HARAKA_PLUGIN = """// accept every recipient and discard every message (the benchmark's reference)
exports.hook_rcpt = function (next) { next(OK) }
exports.hook_queue = function (next) { next(OK) }
"""


async def terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then wait for the exit (SIGKILL after 15 s): no server outlives the run."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def start_haraka(exe: str, tmp: Path) -> Server:
    inst = tmp / "haraka"
    subprocess.run([exe, "-i", str(inst)], check=True, capture_output=True)  # an instance with default config
    port = free_port()
    (inst / "plugins" / "bench_accept.js").write_text(HARAKA_PLUGIN)
    (inst / "config" / "plugins").write_text("bench_accept\n")
    (inst / "config" / "smtp.ini").write_text(f"[main]\nlisten=127.0.0.1:{port}\n")  # no nodes=: one process
    (inst / "config" / "log.ini").write_text("[main]\nlevel=warn\ntimestamps=false\n")
    (inst / "config" / "me").write_text("haraka.bench\n")
    proc = await asyncio.create_subprocess_exec(
        exe, "-c", str(inst), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_for_banner(port, "Haraka", lambda: proc.returncode is None)
    except BaseException:
        await terminate(proc)
        raise
    return Server("Haraka", port, proc.pid, lambda: terminate(proc))


def postfix_available() -> bool:
    """Whether a private Postfix can run here: Debian's ``postfix`` package, and root (its master
    starts daemons that drop to the ``postfix`` user); prints why not."""
    if not os.path.exists(postfix_support().POSTFIX):
        print("Postfix: skipped (no postfix binary; Debian's postfix package has it)")
        return False
    if os.geteuid() != 0:
        print("Postfix: skipped (a private instance needs root)")
        return False
    return True


def postfix_support() -> ModuleType:
    """``tests/support/postfix.py``: the one private-Postfix helper, shared with the tests."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.support import postfix

    return postfix


async def start_postfix() -> Server:
    """A durable reference: a private Postfix whose smtpd and cleanup write and fsync each queue
    file before the ``250`` (as smtpgate commits its spool), then hand it to the discard transport
    (as smtpgate's null egress). Haraka, discarding in the DATA hook, writes nothing; this is what a
    C MTA that keeps the SMTP promise does on the same machine. Debian's default process limit
    (100), not the tests' 40. ``in_flow_delay = 0``: by default smtpd pauses up to a second before
    each message while arrivals outpace deliveries (measured: 280-310 msg/s at 50 sessions instead
    of about 1000); smtpgate has no such brake, and this measures the ingress, not the flow control."""
    pf = postfix_support().Postfix(
        0, default_transport="discard", relay_transport="discard", relayhost="",
        default_process_limit="100", in_flow_delay="0",
    )
    await asyncio.to_thread(pf.start)
    assert pf.master_pid is not None  # start() returned: the master answered
    return Server("Postfix", pf.port, pf.master_pid, lambda: asyncio.to_thread(pf.stop),
                  settle=lambda: until(pf.queue_is_empty, "Postfix did not empty its queue"))


async def start_bare(tmp: Path) -> Server:
    proc, port = ingress.start_server("bare", str(tmp))
    return Server("bare aiosmtpd", port, proc.pid, lambda: asyncio.to_thread(ingress.stop_server, proc))


async def start_smtpgate(
    name: str, tree: Path, tmp: Path, key: Path, sink_port: int, workers: int, engine: str | None
) -> Server:
    """``smtpgate serve`` from ``tree``: the full default chain with this CSS ``engine`` relaying
    to ``sink_port``, or (``engine`` None) the admission plugins only with null egress."""
    data_dir = tmp / f"data-{name}-{engine or 'ingress'}".replace(" ", "_")
    proc, port, log = await e2e.start_server(write_config(data_dir, sink_port, workers, engine, key), tree)
    spool = data_dir / "spool.db"
    return Server(name, port, proc.pid, lambda: terminate(proc), log, spool, settle=lambda: spool_drained(spool))


def write_config(data_dir: Path, sink_port: int, workers: int, engine: str | None, key: Path) -> Path:
    """The config file of a server under test beside ``data_dir``: the full default chain with this
    CSS ``engine`` relaying to ``sink_port``, or (``engine`` None) the admission plugins only with
    null egress (:data:`ADMISSION_PLUGINS`)."""
    text = e2e.config_text(data_dir, sink_port, workers, engine, key)
    if engine is None:
        text = text.replace("plugins = []", "plugins = " + repr(ADMISSION_PLUGINS).replace("'", '"'))
    cfg = data_dir.with_name(f"{data_dir.name}.toml")
    cfg.write_text(text)
    return cfg


INGRESS_ALONE = """
import asyncio, sys
from pipeline.app.cli.serve import run_gateway
from pipeline.app.gateway import Gateway
from pipeline.config import load_config
from pipeline.toolkit.logs import setup_logging

config = load_config(sys.argv[1])
setup_logging(config.gateway.log_level, config.gateway.log_format)
gateway = Gateway(config)
gateway.services = [gateway.ingress_service()]  # no delivery, tracking, API: the SMTP side alone
asyncio.run(run_gateway(gateway))  # as `smtpgate serve` runs its services (signals, frozen start-up heap)
"""
"""The ingress service of a tree on its own (``--ingress-alone``): the same config, admission plugins
and durable spool as the full server, with nothing delivering; what the delivery side running in the
same process costs the ingress is the difference between the two."""


async def start_ingress_alone(name: str, tree: Path, tmp: Path, key: Path, workers: int) -> Server:
    """``tree``'s ingress service alone, configured as :func:`start_smtpgate` configures the ingress
    server; the spool only grows (nobody delivers), so its CPU is read as soon as the last ``250`` came."""
    cfg = write_config(tmp / f"data-{name}".replace(" ", "_"), 0, workers, None, key)
    proc, port, log = await e2e.start_server(cfg, tree, [sys.executable, "-c", INGRESS_ALONE])
    return Server(name, port, proc.pid, lambda: terminate(proc), log, None, measured=True)


async def until(done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll ``done()`` every 50 ms (a server's queue, read from outside it) until it holds; raise
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} in {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def spool_drained(spool: Path, timeout: float = 120.0) -> None:
    """Wait until the spool holds no message (delivery caught up), reading it from this process."""
    import sqlite3

    conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=30)
    try:
        await until(lambda: not conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0],
                    f"{spool}: delivery did not empty the spool", timeout)
    finally:
        conn.close()


def split_cpu(server: Server, before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(main process, children) CPU seconds between two ``Server.cpu()`` readings."""
    main = after.get(server.pid, 0.0) - before.get(server.pid, 0.0)
    kids = sum(v - before.get(p, 0.0) for p, v in after.items() if p != server.pid)
    return main, kids


class Sink:
    """Postfix's smtp-sink; counts the messages it received (its ``-c`` counter on stdout)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self._changed = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            SMTP_SINK, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "256",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        asyncio.create_task(self._read())
        proc = self.proc
        await wait_for_banner(self.port, "smtp-sink", lambda: proc.returncode is None)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            counts = re.findall(rb"mesg=(\d+)", chunk)
            if counts:
                self.count = int(counts[-1])
                self._changed.set()

    async def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < n:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
        return True

    async def stop(self) -> None:
        if self.proc is not None:
            await terminate(self.proc)


# -- (a) ingress ---------------------------------------------------------------------------------


async def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """msg/s of one smtp-source run (one connection per message); raises if a message failed."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
        "-f", "bench@example.com", "-t", "rcpt@example.net", "-S", "bench", "-M", "client.bench",
        f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or err.strip():
        raise RuntimeError(
            f"smtp-source to port {port}: rc={proc.returncode} {err.decode(errors='replace')[:300]}"
        )
    return messages / elapsed


def print_memory(servers: list[Server]) -> None:
    """One line per server: main, children and total RSS, then each process's role and RSS/PSS."""
    for s in servers:
        main, kids = s.rss()
        print(f"  {s.name:<28}{main:>7.0f} + {kids:>4.0f} = {main + kids:>5.0f}   [{s.per_process()}]", flush=True)


def stats(values: list[float], fmt: str = ".0f") -> str:
    return f"{min(values):{fmt}} / {statistics.median(values):{fmt}} / {max(values):{fmt}}"


async def start_ingress_servers(
    servers: list[Server], tmp: Path, key: Path, trees: list[tuple[str, Path]], workers: int, *, alone: bool
) -> None:
    """The ingress comparison's line-up, appended to ``servers`` as each one starts (the caller
    stops them, those of a failed start-up too): Haraka and Postfix where they can run, a bare
    aiosmtpd, ``smtpgate serve`` per tree and, with ``alone``, each tree's ingress service alone."""
    exe = haraka_available()
    if exe is not None:
        servers.append(await start_haraka(exe, tmp))
    if postfix_available():
        servers.append(await start_postfix())
    servers.append(await start_bare(tmp))
    for name, tree in trees:
        servers.append(await start_smtpgate(name, tree, tmp, key, 0, workers, None))
    if alone:
        for name, tree in trees:
            servers.append(await start_ingress_alone(f"{name} ingress alone", tree, tmp, key, workers))


async def bench_ingress(
    args: argparse.Namespace, tmp: Path, key: Path, trees: list[tuple[str, Path]]
) -> None:
    servers: list[Server] = []
    try:
        await start_ingress_servers(servers, tmp, key, trees, args.workers, alone=args.ingress_alone)
        for s in servers:  # warm-up: imports, caches, the first spool pages
            await smtp_source(s.port, 20, 2, 10240)
        rates: dict[tuple[int, int, str], list[float]] = {}
        cpu_ms: dict[tuple[int, int, str], list[tuple[float, float]]] = {}
        sizes = [kb * 1024 for kb in args.sizes_kb]
        for r in range(args.rounds):
            for size in sizes:
                for sessions in args.sessions:
                    order = servers[r % len(servers) :] + servers[: r % len(servers)]  # rotate who goes first
                    for s in order:
                        before = s.cpu() if s.smtpgate else {}
                        rate = await smtp_source(s.port, args.ingress_messages, sessions, size)
                        rates.setdefault((size, sessions, s.name), []).append(rate)
                        if s.settle is not None:  # its queue empty (delivered) before the next server runs
                            await s.settle()
                        if s.smtpgate:
                            main, kids = split_cpu(s, before, s.cpu())
                            n = args.ingress_messages
                            cpu_ms.setdefault((size, sessions, s.name), []).append((main * 1000 / n, kids * 1000 / n))
        last_done = time.monotonic()  # every server idle from here on
        print(
            f"\n(a) ingress: smtp-source, one connection per message, {args.ingress_messages} messages per "
            f"measurement, {args.rounds} interleaved rounds; msg/s min / median / max"
        )
        refs = [s.name for s in servers if not s.smtpgate]
        gates = [s.name for s in servers if s.smtpgate]
        width = max(22, *(len(n) + 2 for n in refs + gates))  # a column per server, ratios after
        head = f"{'size':>6}{'sessions':>9}" + "".join(f"{n:>{width}}" for n in refs + gates)
        head += "".join(
            f"{g.removeprefix('smtpgate ') + ' / ' + ref.split()[0]:>{width}}" for g in gates for ref in refs
        )
        print(head)
        for size in sizes:
            for sessions in args.sessions:
                row = f"{size // 1024:>4}KB{sessions:>9}"
                row += "".join(f"{stats(rates[(size, sessions, n)]):>{width}}" for n in refs + gates)
                for g in gates:
                    for ref in refs:
                        ratios = [
                            a / b
                            for a, b in zip(
                                rates[(size, sessions, g)], rates[(size, sessions, ref)], strict=True
                            )
                        ]
                        row += f"{stats(ratios, '.2f'):>{width}}"
                print(row, flush=True)
        print("\nsmtpgate CPU ms per message until delivered (null egress): main process | workers, min / median / max")
        print(f"{'size':>6}{'sessions':>9}" + "".join(f"{g:>44}" for g in gates))
        for size in sizes:
            for sessions in args.sessions:
                row = f"{size // 1024:>4}KB{sessions:>9}"
                for g in gates:
                    ms = cpu_ms[(size, sessions, g)]
                    row += f"{stats([m for m, _ in ms], '.2f') + ' | ' + stats([k for _, k in ms], '.2f'):>44}"
                print(row, flush=True)
        if args.idle_seconds > 0:
            smtpgates = [s for s in servers if s.spool is not None]
            await asyncio.sleep(2.0)  # the last run's stragglers (logs, webhooks) settle
            pids = {s.name: process_tree(s.pid) for s in smtpgates}
            before_ns = {s.name: {p: run_ns(p) for p in pids[s.name]} for s in smtpgates}
            await asyncio.sleep(args.idle_seconds)
            print(f"\nsmtpgate idle (nothing sent for {args.idle_seconds:.0f} s, same window): CPU ms per second "
                  "from schedstat, main process | workers")
            for s in smtpgates:
                # a worker that exited idle during the window reads 0 now: count it as 0, not negative
                used = {p: max(0, run_ns(p) - before_ns[s.name][p]) for p in pids[s.name]}
                main_ms = used.get(s.pid, 0) / 1e6 / args.idle_seconds
                kids_ms = sum(v for p, v in used.items() if p != s.pid) / 1e6 / args.idle_seconds
                print(f"  {s.name:<28}{main_ms:>7.3f} | {kids_ms:.3f}")

        await asyncio.sleep(5)  # idle: what a server keeps once the work is done (freed heap trimmed)
        print("\n(c) memory, ingress servers idle after the run: RSS MiB (main + children = total)")
        print_memory(servers)
        if args.idle_memory_seconds > 0:
            await asyncio.sleep(max(0.0, last_done + args.idle_memory_seconds - time.monotonic()))
            print(f"\n(c) memory, ingress servers idle for {time.monotonic() - last_done:.0f} s after the run "
                  "(smtpgate's [spool] worker_max_idle: 60 s by default): RSS MiB (main + children = total)")
            print_memory(servers)
    finally:
        for s in servers:
            await s.stop()


# -- (b) end to end ------------------------------------------------------------------------------


async def send_transactions(
    port: int, raw: bytes, transactions: int, rcpts: int, clients: int, first: int, unique: bool
) -> None:
    """``transactions`` messages of ``rcpts`` recipients each over ``clients`` connections."""
    counter = iter(range(first, first + transactions))

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=120)
        await smtp.connect()
        for i in counter:
            data = e2e.unique_copy(raw, i) if unique else raw
            to = [f"user{i}-{j}@example.net" for j in range(rcpts)]
            errors, _ = await smtp.sendmail("noreply@example.com", to, data)
            if errors:
                raise RuntimeError(f"refused: {errors}")
        await smtp.quit()

    await asyncio.gather(*(client() for _ in range(clients)))


@dataclass
class E2EResult:
    copies_per_s: list[float] = field(default_factory=list)
    main_ms: list[float] = field(default_factory=list)  # server CPU per copy, main process
    workers_ms: list[float] = field(default_factory=list)  # server CPU per copy, worker processes


async def workers_ready(server: Server, workers: int, timeout: float = 60) -> None:
    """Until every worker process has logged that its chain is built (the pool starts after the
    SMTP listener), so the idle figures include them."""
    deadline = time.monotonic() + timeout
    while sum("worker ready" in line for line in server.log) < workers and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # settle


async def bench_e2e(args: argparse.Namespace, tmp: Path, key: Path, trees: list[tuple[str, Path]]) -> None:
    raw = (e2e.CORPUS / "size-typical.eml").read_bytes()
    servers: list[tuple[Server, Sink]] = []
    sinks: list[Sink] = []
    idle: dict[str, tuple[float, float, str]] = {}  # RSS right after start, before any message
    try:
        for engine in args.engines:
            for name, tree in trees:
                sink = Sink()
                sinks.append(sink)
                await sink.start()
                label = name if len(args.engines) == 1 else f"{name} {engine}"
                server = await start_smtpgate(label, tree, tmp, key, sink.port, args.workers, engine)
                servers.append((server, sink))
                await workers_ready(server, args.workers)
                idle[server.name] = (*server.rss(), server.per_process())
        first = 0
        for server, sink in servers:  # warm-up: every plugin loaded in every worker, caches filled
            await send_transactions(server.port, raw, 4 * args.workers, 2, 2, first, True)
            first += 4 * args.workers
            if not await sink.wait_for(8 * args.workers, 120):
                raise SystemExit(f"{server.name}: warm-up did not drain:\n" + "\n".join(server.log[-20:]))
        results: dict[tuple[bool, int, str], E2EResult] = {}
        for r in range(args.rounds):
            for unique in (False, True):
                for rcpts in args.rcpts:
                    transactions = max(2, args.copies // rcpts)
                    order = servers[r % len(servers) :] + servers[: r % len(servers)]
                    for server, sink in order:
                        base = sink.count
                        before = server.cpu()
                        start = time.perf_counter()
                        await send_transactions(
                            server.port, raw, transactions, rcpts, args.clients, first, unique
                        )
                        first += transactions
                        copies = transactions * rcpts
                        if not await sink.wait_for(base + copies, 600):
                            raise SystemExit(
                                f"{server.name}: only {sink.count - base}/{copies} copies arrived:\n"
                                + "\n".join(server.log[-20:])
                            )
                        elapsed = time.perf_counter() - start
                        after = server.cpu()
                        main = after.get(server.pid, 0.0) - before.get(server.pid, 0.0)
                        workers = sum(v - before.get(p, 0.0) for p, v in after.items() if p != server.pid)
                        res = results.setdefault((unique, rcpts, server.name), E2EResult())
                        res.copies_per_s.append(copies / elapsed)
                        res.main_ms.append(main * 1000 / copies)
                        res.workers_ms.append(workers * 1000 / copies)
        last_done = time.monotonic()  # every server idle from here on
        print(
            f"\n(b) end to end: size-typical.eml ({len(raw) // 1024} KB), full default chain ({'/'.join(args.engines)}, "
            f"RSA-2048), {args.workers} workers, {args.clients} clients, smarthost smtp-sink; about "
            f"{args.copies} copies per measurement, {args.rounds} interleaved rounds; min / median / max"
        )
        print(
            f"{'html':<8}{'rcpts':>6}  {'server':<22}{'copies/s':>20}{'CPU ms/copy main':>22}"
            f"{'CPU ms/copy workers':>22}{'CPU ms/copy total':>22}"
        )
        for unique in (False, True):
            for rcpts in args.rcpts:
                for server, _ in servers:
                    res = results[(unique, rcpts, server.name)]
                    total = [a + b for a, b in zip(res.main_ms, res.workers_ms, strict=True)]
                    print(
                        f"{'unique' if unique else 'shared':<8}{rcpts:>6}  {server.name:<22}"
                        f"{stats(res.copies_per_s, '.1f'):>20}{stats(res.main_ms, '.2f'):>22}"
                        f"{stats(res.workers_ms, '.2f'):>22}{stats(total, '.2f'):>22}",
                        flush=True,
                    )
        groups = [servers[i : i + len(trees)] for i in range(0, len(servers), len(trees))]  # one per engine
        for server, first_name in [(g[k][0], g[0][0].name) for g in groups for k in range(1, len(g))]:
            # before/after: each later tree against the first, same engine
            print(f"{server.name} / {first_name}, per-round ratios (min / median / max):")
            for unique in (False, True):
                for rcpts in args.rcpts:
                    a, b = results[(unique, rcpts, server.name)], results[(unique, rcpts, first_name)]
                    speed = [x / y for x, y in zip(a.copies_per_s, b.copies_per_s, strict=True)]
                    cpu = [
                        (am + aw) / (bm + bw)
                        for am, aw, bm, bw in zip(
                            a.main_ms, a.workers_ms, b.main_ms, b.workers_ms, strict=True
                        )
                    ]
                    print(
                        f"  {'unique' if unique else 'shared':<8}{rcpts:>4} rcpts: copies/s {stats(speed, '.2f')}, "
                        f"server CPU per copy {stats(cpu, '.2f')}"
                    )
        if 1 in args.rcpts and max(args.rcpts) > 1:
            most = max(args.rcpts)
            print(
                f"server CPU per extra recipient copy, from the medians: (total at {most} x {most} - total at 1) "
                f"/ {most - 1}"
            )
            for unique in (False, True):
                for server, _ in servers:
                    per = {
                        n: statistics.median(
                            a + b
                            for a, b in zip(
                                results[(unique, n, server.name)].main_ms,
                                results[(unique, n, server.name)].workers_ms,
                                strict=True,
                            )
                        )
                        for n in (1, most)
                    }
                    extra = (per[most] * most - per[1]) / (most - 1)
                    print(f"  {'unique' if unique else 'shared':<8}{server.name:<22}{extra:>8.2f} ms")
        await asyncio.sleep(5)  # idle: what a server keeps once the work is done (freed heap trimmed)
        print("\n(c) memory, full-chain servers: RSS MiB (main + children = total) [role RSS/PSS per process]")
        for server, _ in servers:
            main, kids, each = idle[server.name]
            print(f"  {server.name + ', started':<36}{main:>7.0f} + {kids:>4.0f} = {main + kids:>5.0f}   [{each}]")
            main, kids = server.rss()
            print(f"  {server.name + ', idle after the run':<36}{main:>7.0f} + {kids:>4.0f} = {main + kids:>5.0f}"
                  f"   [{server.per_process()}]")
        if args.idle_memory_seconds > 0:
            await asyncio.sleep(max(0.0, last_done + args.idle_memory_seconds - time.monotonic()))
            idle_for = f", idle {time.monotonic() - last_done:.0f} s"
            for server, _ in servers:
                main, kids = server.rss()
                print(f"  {server.name + idle_for:<36}{main:>7.0f} + {kids:>4.0f} = {main + kids:>5.0f}"
                      f"   [{server.per_process()}]", flush=True)
    finally:
        for server, _ in servers:
            await server.stop()
        for sink in sinks:
            await sink.stop()


async def main_async(args: argparse.Namespace) -> None:
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    names = [f"smtpgate {t.name}" for t in trees]
    if len(set(names)) != len(names):
        names = [f"smtpgate {i}:{t.name}" for i, t in enumerate(trees)]
    for path in (SMTP_SOURCE, SMTP_SINK):
        if not Path(path).exists():
            raise SystemExit(f"{path} not found: install Debian's postfix package (the daemon need not run)")
    print(
        f"{datetime.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; trees: "
        + ", ".join(f"{n} = {t}" for n, t in zip(names, trees, strict=True))
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        key = e2e.write_key(tmp)
        pairs = list(zip(names, trees, strict=True))
        if "ingress" in args.only:
            await bench_ingress(args, tmp, key, pairs)
        if "e2e" in args.only:
            await bench_e2e(args, tmp, key, pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tree", type=Path, action="append", help="source tree to run smtpgate from (repeatable)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=["ingress", "e2e"], default=["ingress", "e2e"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--engines", nargs="+", choices=["css_inline", "premailer"], default=["css_inline"])
    ap.add_argument("--ingress-messages", type=int, default=1000,
                    help="messages per ingress measurement (at 200 one lasted under half a second: a moment of a "
                    "shared machine's load decided it)")
    ap.add_argument(
        "--ingress-alone", action="store_true",
        help="also run each tree's ingress service without delivery (what the delivery side costs the ingress)",
    )  # fmt: skip
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="idle CPU window after the ingress runs (0: skip)")
    ap.add_argument("--sizes-kb", type=int, nargs="+", default=[10, 60])
    ap.add_argument(
        "--idle-memory-seconds", type=float, default=65.0,
        help="second memory reading once the servers have been idle this long, past smtpgate's "
        "[spool] worker_max_idle (60 s default) (0: skip)",
    )
    ap.add_argument(
        "--copies", type=int, default=600,
        help="recipient copies per end-to-end measurement (200, about a second, spread identical trees by 20 %%)",
    )  # fmt: skip
    ap.add_argument("--rcpts", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--clients", type=int, default=10, help="SMTP connections sending in the end-to-end part")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
