"""Core commands: ``smtpgate replay``, ``smtpgate check-config`` and ``smtpgate plugins``.

Exit status of ``replay``: 0 when every message was accepted and every copy is ready to deliver
(or was deliberately discarded), 1 when a message or a recipient was refused (the SMTP reply is
printed), 2 when an input is not a message or the configuration is wrong.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from pathlib import Path
from typing import TextIO

import click

from pipeline.app.cli import config_option, get_config, main
from pipeline.app.instance import INIT_HINT, dkim_summary
from pipeline.app.replay import (
    ReplayError,
    ReplayResult,
    collect_inputs,
    credential_from_config,
    output_path,
    read_message_file,
    render_diff,
    replay_chain,
    replay_message,
    write_mbox,
)
from pipeline.chain.loader import PluginSet
from pipeline.chain.runner import Chain
from pipeline.config import Config
from pipeline.contract.context import Credential, MessageContext
from pipeline.contract.hookspecs import ALL_PHASES
from pipeline.contract.verdicts import Discard


def _fail(message: str, status: int = 2) -> None:
    click.echo(f"smtpgate: {message}", err=True)
    sys.exit(status)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@config_option
@click.option("--credential", "credential_name", metavar="NAME", help="Replay as this credential ([[credentials]], else credentials.db).")
@click.option(
    "--mail-from", metavar="ADDRESS", default=None, help="Envelope sender (default: the From header)."
)
@click.option(
    "--rcpt", multiple=True, metavar="ADDRESS", help="Envelope recipient, repeatable (default: To and Cc)."
)
@click.option(
    "--out",
    metavar="DIR|-",
    default=None,
    help="Write each recipient's final copy into DIR (as <input>.<recipient>.eml), or to stdout with '-'.",
)
@click.option("--explain", is_flag=True, help="Print each plugin's verdict, time and edits.")
@click.option(
    "--diff", "show_diff", is_flag=True, help="Print a unified diff of headers and bodies, before/after."
)
def replay(
    paths: tuple[str, ...],
    config_path: str | None,
    credential_name: str | None,
    mail_from: str | None,
    rcpt: tuple[str, ...],
    out: str | None,
    explain: bool,
    show_diff: bool,
) -> None:
    """Run FILE or DIR (every *.eml in it) through the chain, as the server would, without a network."""
    config = get_config(config_path, quiet=True)
    credential = credential_from_config(config, credential_name) if credential_name else None
    chain = replay_chain(config)
    try:
        files = collect_inputs(paths)
    except ReplayError as exc:
        _fail(str(exc))
    out_dir: Path | None = None
    if out and out != "-":
        out_dir = Path(out)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(f"--out {out}: {exc.strerror or exc}")
    # With --out - the messages own stdout, so the report goes to stderr.
    report = sys.stderr if out == "-" else sys.stdout
    status = asyncio.run(
        _replay_all(chain, files, credential, mail_from, list(rcpt), out, out_dir, explain, show_diff, report)
    )
    sys.exit(status)


async def _replay_all(
    chain: Chain,
    files: list[Path],
    credential: Credential | None,
    mail_from: str | None,
    rcpts: list[str],
    out: str | None,
    out_dir: Path | None,
    explain: bool,
    show_diff: bool,
    report: TextIO,
) -> int:
    status = 0
    to_stdout: list[tuple[str, bytes]] = []
    taken: set[Path] = set()  # output files written by this run: same-named inputs must not overwrite
    for path in files:
        try:
            raw = read_message_file(path)
            result = await replay_message(
                chain, raw, name=str(path), mail_from=mail_from, rcpt_tos=rcpts, credential=credential
            )
        except ReplayError as exc:
            click.echo(f"smtpgate: {exc}", err=True)
            status = 2
            continue
        targets: dict[int, Path] = {}
        if out_dir is not None:
            for i, copy in enumerate(result.copies):
                if copy.data is not None:
                    targets[i] = _unique(output_path(out_dir, str(path), copy.recipient), taken)
        _report(result, targets, report)
        if explain:
            click.echo(f"  trace {result.trace.queue_id or ''}".rstrip(), file=report)
            for line in result.trace.render().splitlines():
                click.echo(f"    {line}", file=report)
        for i, copy in enumerate(result.copies):
            if copy.data is None:
                continue
            if show_diff:
                click.echo(
                    render_diff(result.original, copy.data, f"{path} (before)", f"{copy.recipient} (after)"),
                    file=report,
                )
            if i in targets:
                targets[i].write_bytes(copy.data)
            elif out == "-":
                to_stdout.append((copy.mail_from, copy.data))
        if not result.ok:
            status = max(status, 1)
    if to_stdout:
        stream = sys.stdout.buffer
        if len(to_stdout) == 1:
            stream.write(to_stdout[0][1])
        else:
            write_mbox(to_stdout, stream)
        stream.flush()
    return status


def _unique(target: Path, taken: set[Path]) -> Path:
    """``target``, or ``<stem>.2.eml``, ``.3`` ... when this run already wrote that name."""
    candidate, n = target, 1
    while candidate in taken:
        n += 1
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
    taken.add(candidate)
    return candidate


def _report(result: ReplayResult, targets: dict[int, Path], report: TextIO) -> None:
    """One line per message, one per recipient copy: what the server would have answered and sent."""
    if result.verdict is not None:
        what = "discarded" if result.discarded else "rejected"
        click.echo(f"{result.name}: {what} by {result.stopped_by}: {result.verdict.reply()}", file=report)
        return
    click.echo(
        f"{result.name}: accepted, queue id {result.trace.queue_id} (MAIL FROM:<{result.mail_from}>)",
        file=report,
    )
    ctx = result.ctx
    if ctx is not None and (ctx.tags or ctx.metadata or ctx.not_before or ctx.deliver_by):
        click.echo(f"  {message_metadata(ctx)}", file=report)
    for rcpt, verdict in result.refused:
        click.echo(f"  {rcpt}: refused at RCPT: {verdict.reply()}", file=report)
    for i, copy in enumerate(result.copies):
        if copy.data is None:
            kind = "discarded" if isinstance(copy.verdict, Discard) else "not delivered"
            reply = copy.verdict.reply() if copy.verdict is not None else ""
            click.echo(f"  {copy.recipient}: {kind}: {reply}", file=report)
            continue
        where = f", written to {targets[i]}" if i in targets else ""
        click.echo(
            f"  {copy.recipient}: ready, {len(copy.data)} bytes, MAIL FROM:<{copy.mail_from}>{where}",
            file=report,
        )


def message_metadata(ctx: MessageContext) -> str:
    """The message metadata a dialect recorded: tags, metadata, send window (one report line)."""
    parts = [f"tags {','.join(ctx.tags) or '-'}", f"metadata {json.dumps(ctx.metadata, ensure_ascii=False)}"]
    for label, ts in (("send at", ctx.not_before), ("deliver by", ctx.deliver_by)):
        if ts:
            parts.append(f"{label} {datetime.datetime.fromtimestamp(ts, datetime.UTC):%Y-%m-%d %H:%M:%S} UTC")
    return "; ".join(parts)


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration (and load every plugin in the chain): OK and a summary, or the errors."""
    config = get_config(config_path, quiet=True)
    plugins = PluginSet(config)
    problems = _missing_files(config)
    if problems:
        for line in problems:
            click.echo(f"smtpgate: config error: {line}", err=True)
        sys.exit(2)
    click.echo(f"OK: {config.source}")
    for line in _summary(config, plugins):
        click.echo(f"  {line}")


def _missing_files(config: Config) -> list[str]:
    """Files the config names that cannot be read (checked here; the server would fail later)."""
    out = []
    for key, path in (("tls.cert_file", config.tls.cert_file), ("tls.key_file", config.tls.key_file)):
        if path is not None and not Path(path).is_file():
            out.append(f"{config.source}: {key}: file {path} not found")
    return out


def _summary(config: Config, plugins: PluginSet) -> list[str]:
    listeners = ", ".join(f"{li.name or '?'} {li.address}:{li.port} ({li.tls})" for li in config.listeners)
    on = [name for name, value in plugins.features.defaults.items() if value]
    off = [name for name, value in plugins.features.defaults.items() if not value]
    creds = ", ".join(c.name for c in config.credentials) or "none in the file"
    return [
        f"hostname: {config.gateway.hostname}",
        f"data dir: {config.gateway.data_dir}",
        f"listeners: {listeners or 'none'}",
        f"chain ({len(plugins.plugins)}): {', '.join(p.name for p in plugins.plugins) or 'empty'}",
        f"features on: {', '.join(on) or 'none'}; off: {', '.join(off) or 'none'}",
        f"credentials: {creds}",
        f"egress: {config.egress.type}",
        _dkim_line(config, plugins),
        *(f"from the environment: {key} = ${variable}" for key, variable in sorted(config.overrides.items())),
    ]


def _dkim_line(config: Config, plugins: PluginSet) -> str:
    has_signer, domains = dkim_summary(plugins.plugins)
    if has_signer and config.features.get("dkim", True) and domains:
        return f"dkim: {'; '.join(domains)}"
    if has_signer and config.features.get("dkim", True):
        return f"dkim: no key configured: mail goes out UNSIGNED (fix: {INIT_HINT})"
    return "dkim: off (mail goes out unsigned)"


@main.command("plugins")
@config_option
def plugins_cmd(config_path: str | None) -> None:
    """The loaded plugins (source, version, feature switch, hooks), their switches and defaults, and the
    run order of each phase."""
    plugin_set = PluginSet(get_config(config_path, quiet=True))
    rows = [("name", "source", "version", "feature", "hooks")]
    for p in plugin_set.plugins:
        rows.append(
            (p.name, p.source, p.version, p.feature or "-", ", ".join(h for h in ALL_PHASES if h in p.hooks))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    click.echo("")
    registry = plugin_set.features
    click.echo("switches (default, after [features]; header: an X-SMTPeter-* header may set it):")
    for name, switch in sorted(registry.switches.items()):
        default = "on" if registry.defaults[name] else "off"
        changed = f" (plugin default {'on' if switch.default else 'off'})" if registry.defaults[name] != switch.default else ""
        header = "header" if switch.by_header else "policy"
        click.echo(f"  {name:<16} {default:<4} {header:<7} {', '.join(switch.plugins)}{changed}")
    if not registry.switches:
        click.echo("  (none)")
    click.echo("")
    click.echo("order per phase:")
    for phase in ALL_PHASES:
        names = [p.name for p in plugin_set.order(phase)]
        click.echo(f"  {phase:<15} {' -> '.join(names) if names else '(none)'}")


__all__ = ["check_config", "plugins_cmd", "replay"]
