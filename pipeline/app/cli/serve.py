"""``smtpgate serve``: run every service of the gateway until SIGTERM or SIGINT.

The command knows nothing about the services themselves: it builds ``gateway.services`` and
runs them. The first SIGTERM/SIGINT drains (see :mod:`pipeline.ingress.service`); a second one
cuts the grace period short.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

import click

from pipeline.app import systemd
from pipeline.app.cli import config_option, get_config, main
from pipeline.app.gateway import Gateway
from pipeline.app.instance import remove_pid_file, startup_summary, write_pid_file
from pipeline.toolkit.logs import setup_logging

log = logging.getLogger("smtpgate")


def freeze_startup_heap() -> None:
    """Move what start-up left alive (modules, config, plugins, stores: a few hundred thousand
    objects) to the collector's permanent generation, as CPython's docs advise for servers.

    Why (issue 17, main process per message): every full collection otherwise walks all of it,
    about 80 us per message at 10 sessions; afterwards it walks only what traffic allocates.
    Frozen objects are still freed by reference counting; only cycles among them stay.
    """
    gc.collect()
    gc.freeze()


async def run_gateway(gateway: Gateway) -> None:
    """Start the services, wait for a signal, drain, stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stopping = {"count": 0}
    main_task = asyncio.current_task()

    def on_signal(signum: int) -> None:
        stopping["count"] += 1
        if stopping["count"] == 1:
            log.info("received %s: draining (grace %.0fs); send it again to stop at once",
                     signal.Signals(signum).name, gateway.config.limits.shutdown_grace)
            systemd.notify("STOPPING=1")
            stop.set()
        elif main_task is not None:
            log.warning("received %s again: stopping now", signal.Signals(signum).name)
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    watchdog: asyncio.Task[None] | None = None
    try:
        await gateway.start()
        freeze_startup_heap()
        write_pid_file(gateway.config.data_dir)
        for level, line in startup_summary(gateway):
            log.log(level, "%s", line)
        log.info("smtpgate running: %s", ", ".join(s.name for s in gateway.services) or "no services")
        systemd.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=accepting mail")
        interval = systemd.watchdog_interval()
        if interval:
            watchdog = asyncio.create_task(systemd.watchdog(interval))
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
        remove_pid_file(gateway.config.data_dir)
        try:
            # a second signal that cancelled gateway.start() (still starting) must not get the full grace
            await gateway.stop(0 if stopping["count"] > 1 else None)
        except asyncio.CancelledError:
            await gateway.stop(0)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@main.command()
@config_option
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processing worker processes (default: [spool] workers, else the number of CPUs).")
def serve(config_path: str | None, workers: int | None) -> None:
    """Run the gateway: SMTP listeners, processing workers, delivery, tracking (Ctrl-C or SIGTERM stops)."""
    config = get_config(config_path, quiet=True)
    root = logging.getLogger()
    # --verbose wins over [gateway] log_level
    level = logging.DEBUG if root.level == logging.DEBUG else config.gateway.log_level.upper()
    setup_logging(level, config.gateway.log_format)
    gateway = Gateway(config)
    gateway.build_services(workers)
    try:
        asyncio.run(run_gateway(gateway))
    except OSError as exc:
        click.echo(f"smtpgate: cannot start: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
