"""Log setup shared by the main process and the worker processes.

Every line carries the time, the level, the logger and, where the line is about one message,
its queue id. ``text`` keeps the Postfix-style ``QUEUEID: what happened`` message after a
timestamp, level and ``logger[pid]``; ``json`` writes the same fields as one object per line
for a log shipper. Worker processes call :func:`setup_logging` with the parent's settings, so
their lines look exactly like the main process's.

The queue id is taken from ``extra={"queue_id": ...}`` or, since the code base logs
Postfix-style, from a message that starts with ``<queue id>: ``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import sys
from typing import Any, TextIO

# pipeline.contract.context.new_queue_id: a time prefix and random characters from this alphabet
_QUEUE_ID = re.compile(r"([0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{12,24}): ")
_HANDLER_NAME = "smtpgate"


class QueueIdFilter(logging.Filter):
    """Sets ``record.queue_id`` ("" when the line is about no message), and ``record.message``
    (what :meth:`logging.Formatter.format` sets too) so the line's text is formatted once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "queue_id", None):
            message = record.message = record.getMessage()
            match = _QUEUE_ID.match(message[:40])
            record.queue_id = match.group(1) if match else ""
        return True


def _message(record: logging.LogRecord) -> str:
    """The record's text: as :class:`QueueIdFilter` formatted it, else formatted now."""
    message = record.__dict__.get("message")
    return message if isinstance(message, str) else record.getMessage()


class TextFormatter(logging.Formatter):
    """``2026-03-01T10:00:00.123+00:00 INFO smtpgate.delivery[812]: 4XyZ...: to=<a@b>, status=sent``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record)} {record.levelname} {record.name}[{record.process}]: {_message(record)}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, queue_id, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "queue_id": getattr(record, "queue_id", "") or None,
            "message": _message(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _json(out)


_json = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(..., ensure_ascii=False) builds one per call

_second: tuple[int, str, str] = (-1, "", "")
"""The last second formatted: (Unix second, ``YYYY-MM-DDTHH:MM:SS``, UTC offset ``+HH:MM``)."""


def _timestamp(record: logging.LogRecord) -> str:
    """``datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")``, the same
    text, with the date, time and local offset computed once per second (two lines per message
    made the time zone look-up a visible part of the main process's time)."""
    global _second
    fraction, whole = math.modf(record.created)
    micro = round(fraction * 1e6)  # rounded as datetime.fromtimestamp rounds (half to even)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    second = int(whole)
    cached = _second  # one read: another thread may replace it meanwhile
    if cached[0] != second:
        text = datetime.datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
        cached = _second = (second, text[:19], text[19:])
    return f"{cached[1]}.{micro // 1000:03d}{cached[2]}"


def setup_logging(level: str | int = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger of this process; calling it again replaces our handler.

    Like ``logging.basicConfig`` it leaves a root logger that someone else configured (a test
    runner's capture) alone, apart from the level.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == _HANDLER_NAME]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if root.handlers and not ours:
        return
    for handler in ours:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(QueueIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    skip_unused_record_fields()
    logging.captureWarnings(True)  # warnings.warn() lines get the same format


def skip_unused_record_fields() -> None:
    """Stop every log record from collecting what neither of our formats prints: the calling function
    (a walk up the stack per line), the thread and the multiprocessing process name (the "Optimization"
    switches of the logging documentation); the pid, which both print, stays. Applied only where our
    handler is the root's, so another's format (a test runner's capture) keeps those fields."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False


def current_settings() -> tuple[int, str]:
    """(level, format) of this process, for a worker process to copy."""
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.get_name() == _HANDLER_NAME:
            return root.level, "json" if isinstance(handler.formatter, JsonFormatter) else "text"
    return root.level, "text"
