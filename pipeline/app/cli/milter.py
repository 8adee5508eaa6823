"""``smtpgate milter --listen inet:HOST:PORT|unix:PATH``: the chain as a Sendmail/Postfix milter.

Only the milter runs (no SMTP listeners, spool, delivery or tracking HTTP); ``smtpgate serve``
runs it beside the rest when ``[milter] listen`` is set. SIGTERM/SIGINT stop it after the
connections in progress finish (``[limits] shutdown_grace``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.chain.loader import PluginSet
from pipeline.chain.runner import Chain
from pipeline.config import parse_milter_listen
from pipeline.milter.service import MilterService

log = logging.getLogger("smtpgate")


def _endpoint(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for spec in value:
        try:
            parse_milter_listen(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


async def _run(service: MilterService, grace: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await service.start()
    log.info("smtpgate milter running on %s", ", ".join(map(str, service.bound)))
    try:
        await stop.wait()
    finally:
        await service.stop(grace)


@main.command()
@click.option(
    "--listen",
    "-l",
    multiple=True,
    callback=_endpoint,
    metavar="inet:HOST:PORT|unix:PATH",
    help="Milter socket, Postfix syntax (repeatable; default: [milter] listen).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes for end of message (default: [milter] workers; 0: in the event loop).",
)
@config_option
def milter(listen: tuple[str, ...], workers: int | None, config_path: str | None) -> None:
    """Run the plugin chain as a Sendmail/Postfix milter (smtpd_milters = inet:HOST:PORT)."""
    config = get_config(config_path, quiet=True)
    if workers is not None:
        config.milter.workers = workers
    root = logging.getLogger()
    if root.level != logging.DEBUG:
        root.setLevel(config.gateway.log_level.upper())
    if not listen and not config.milter.listen:
        click.echo(
            "smtpgate: milter: no socket: give --listen inet:HOST:PORT|unix:PATH or set [milter] listen",
            err=True,
        )
        sys.exit(2)
    service = MilterService(config, Chain(PluginSet(config)), list(listen) or None)
    try:
        asyncio.run(_run(service, config.limits.shutdown_grace))
    except OSError as exc:
        click.echo(f"smtpgate: cannot start: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
