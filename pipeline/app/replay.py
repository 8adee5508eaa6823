"""``smtpgate replay``: run messages through the same admission and processing code the server
runs, in process, with the egress replaced by an output.

A replay plays a well-behaved submission client: it connects from 127.0.0.1, says EHLO, is
already on TLS, authenticates as ``--credential`` when given, then MAIL FROM, one RCPT TO per
recipient and DATA. It is :func:`pipeline.chain.driver.drive`, the code plugin authors' ``run_chain``
runs too: every admission phase (``on_connect`` ... ``on_message``), then one final copy per
recipient from the processing phases. So what a replay shows is what the server would send.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.accounts.store import has_credential_store, open_credential_store
from pipeline.chain.driver import ChainResult, drive, envelope_from_headers, submission_session
from pipeline.chain.loader import PluginSet
from pipeline.chain.runner import Chain
from pipeline.config import Config, ConfigError
from pipeline.contract.context import Credential
from pipeline.contract.message import Message, MessageError
from pipeline.events import open_suppression_list

_FIELD_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable ASCII except ':'


_MESSAGE_FIELDS = frozenset(
    "from to cc bcc subject date message-id mime-version content-type received return-path sender reply-to".split()
)
"""A file with none of these at the top is some other text file that happens to contain a colon."""


class ReplayError(Exception):
    """An input that cannot be replayed (unreadable, not a message, no recipient): one line."""


@dataclass
class ReplayResult(ChainResult):
    """What one input became: the driver's result, with the input's name and bytes."""

    name: str = "<message>"
    original: bytes = b""


def replay_chain(config: Config) -> Chain:
    """The chain a replay runs: the configured plugins, with the gateway's real stoplist."""
    return Chain(PluginSet(config, open_suppression=lambda: open_suppression_list(config)))


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus every ``*.eml`` under each directory (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.eml") if f.is_file())
            if not found:
                raise ReplayError(f"{p}: no .eml files in this directory")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise ReplayError(f"{p}: no such file or directory")
    return out


def read_message_file(path: Path) -> bytes:
    """The file's bytes if they are an RFC 5322 message; :class:`ReplayError` saying why not.

    A leading mbox ``From `` line (as mail clients save messages) is dropped.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if raw.startswith(b"From "):
        raw = raw.partition(b"\n")[2]
    try:
        msg = Message(raw)
    except MessageError as exc:
        raise ReplayError(f"{path}: {exc}") from None
    for n, header in enumerate(msg.headers, 1):
        if not _FIELD_NAME.match(header.name):
            raise ReplayError(f"{path}: not an RFC 5322 message: header line {n} is not a header field")
    if not {h.name.lower() for h in msg.headers} & _MESSAGE_FIELDS:
        raise ReplayError(
            f"{path}: not an RFC 5322 message: none of From, To, Subject, Date, Message-ID, ..."
        )
    return raw


def credential_from_config(config: Config, name: str) -> Credential:
    """The credential called ``name``: a ``[[credentials]]`` entry, else one in
    ``<data_dir>/credentials.db`` (``smtpgate credentials add``). The file wins, as in the server."""
    for section in config.credentials:
        if section.name == name:
            if section.disabled:
                raise ConfigError(f"{config.source}: credentials: {name!r} is disabled")
            return section.to_credential()
    store_path = config.data_dir / "credentials.db" if config.storage.url is None else "[storage] url"
    stored: list[str] = []
    if has_credential_store(config):  # never create the SQLite file just to look into it
        store = open_credential_store(config)
        try:
            records = store.records()
        finally:
            store.close()
        for rec in records:
            if rec.name == name:
                if rec.disabled:
                    raise ConfigError(f"{store_path}: credential {name!r} is disabled")
                return rec.credential()
        stored = [r.name for r in records]
    known = ", ".join([c.name for c in config.credentials] + stored) or "none declared"
    raise ConfigError(
        f"{config.source}: credentials: no credential named {name!r} (known: {known}) in the file or {store_path}"
    )


async def replay_message(
    chain: Chain,
    raw: bytes,
    *,
    name: str = "<message>",
    mail_from: str | None = None,
    rcpt_tos: Sequence[str] = (),
    credential: Credential | None = None,
) -> ReplayResult:
    """Every phase, as an SMTP session then the workers would run them (:func:`drive`), in process."""
    sender, rcpts = (mail_from or "", list(rcpt_tos))
    if mail_from is None or not rcpts:
        head_from, head_rcpts = envelope_from_headers(raw)
        sender = head_from if mail_from is None else mail_from
        rcpts = rcpts or head_rcpts
    if not rcpts:
        raise ReplayError(f"{name}: no recipient: the message has no To or Cc address; give --rcpt")
    session = submission_session(credential, listener="replay")
    driven = await drive(chain, raw, sender, rcpts, credential=credential, session=session)
    return ReplayResult(**vars(driven), name=name, original=raw)


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def output_path(out_dir: Path, source: str, recipient: str) -> Path:
    """``<out>/<input stem>.<recipient>.eml`` (recipient made safe for a file name)."""
    safe = re.sub(r"[^A-Za-z0-9@._+-]", "_", recipient) or "_"
    return out_dir / f"{Path(source).stem}.{safe}.eml"


def write_mbox(copies: Sequence[tuple[str, bytes]], stream: BinaryIO) -> None:
    """Several messages on one stream as mboxrd: ``From `` separators, ``>From`` quoting."""
    for sender, data in copies:
        stream.write(f"From {sender or 'MAILER-DAEMON'} Thu Jan  1 00:00:00 1970\n".encode())
        for line in data.split(b"\r\n"):
            if re.match(rb">*From ", line):
                line = b">" + line
            stream.write(line + b"\n")


def _header_lines(msg: Message) -> list[str]:
    return [f"{h.name}: {h.value}" for h in msg.headers]


def render_diff(before: bytes, after: bytes, before_label: str, after_label: str) -> str:
    """A unified diff of the headers (decoded) and of each HTML and text body (decoded), before/after."""
    old, new = Message(before), Message(after)
    out: list[str] = []

    def section(a: list[str], b: list[str], what: str) -> None:
        out.extend(
            difflib.unified_diff(a, b, f"{before_label} {what}", f"{after_label} {what}", lineterm="", n=2)
        )

    section(_header_lines(old), _header_lines(new), "headers")
    for kind, parts_of in (("HTML", Message.html_parts), ("text", Message.text_parts)):
        a_parts, b_parts = parts_of(old), parts_of(new)
        for i in range(max(len(a_parts), len(b_parts))):
            a = a_parts[i].text().splitlines() if i < len(a_parts) else []
            b = b_parts[i].text().splitlines() if i < len(b_parts) else []
            path = (b_parts[i] if i < len(b_parts) else a_parts[i]).path
            section(a, b, f"{kind} part {path}")
    return "\n".join(out) if out else "(no changes)"
