"""The log line formats: the cached timestamp is the text datetime would give, the queue id is found,
and each line's message is formatted once."""

from __future__ import annotations

import datetime
import io
import json
import logging

import pytest

from pipeline.toolkit.logs import JsonFormatter, QueueIdFilter, TextFormatter, _timestamp


def _reference(created: float) -> str:
    return datetime.datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


def _record(msg: str, *args: object, created: float | None = None) -> logging.LogRecord:
    record = logging.LogRecord("smtpgate.ingress", logging.INFO, __file__, 1, msg, args, None)
    if created is not None:
        record.created = created
    return record


@pytest.mark.parametrize(
    "created",
    [
        1_764_748_800.0,
        1_764_748_800.0004999,
        1_764_748_800.0005,
        1_764_748_800.9994999,
        1_764_748_800.9995,
        1_764_748_800.9999995,
        1_764_748_801.123456,
        1_700_000_000.5,
        1_780_000_000.25,
        0.0,
        86_399.999_999_9,
    ],
)
def test_the_cached_timestamp_is_the_text_datetime_gives(created: float) -> None:
    assert _timestamp(_record("x", created=created)) == _reference(created)


def test_timestamps_within_one_second_and_across_seconds_match_datetime() -> None:
    base = 1_764_748_800.0
    for i in range(5000):  # 0.5 ms apart: the cache is reused, then renewed every second
        created = base + i * 0.000_499_7
        assert _timestamp(_record("x", created=created)) == _reference(created)


def _handler(formatter: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(QueueIdFilter())
    handler.setFormatter(formatter)
    return handler, out


def test_a_text_line_carries_time_level_logger_pid_and_message() -> None:
    handler, out = _handler(TextFormatter())
    record = _record(
        "%s: to=<%s>, status=sent", "1krWY8jZPYRbMTXL", "a@example.com", created=1_764_748_800.25
    )
    handler.handle(record)
    assert out.getvalue() == (
        f"{_reference(1_764_748_800.25)} INFO smtpgate.ingress[{record.process}]: "
        "1krWY8jZPYRbMTXL: to=<a@example.com>, status=sent\n"
    )
    assert record.queue_id == "1krWY8jZPYRbMTXL"


def test_a_json_line_has_the_same_fields_and_keeps_non_ascii() -> None:
    handler, out = _handler(JsonFormatter())
    record = _record("queue_id=%s accepted from=<%s>", "x", "józef@example.com", created=1_764_748_800.5)
    record.queue_id = "1krWY8jZPYRbMTXL"
    handler.handle(record)
    line = out.getvalue()
    assert "józef" in line  # not \\u escaped
    assert json.loads(line) == {
        "time": _reference(1_764_748_800.5),
        "level": "INFO",
        "logger": "smtpgate.ingress",
        "pid": record.process,
        "queue_id": "1krWY8jZPYRbMTXL",
        "message": "queue_id=x accepted from=<józef@example.com>",
    }


def test_a_record_formatted_without_the_filter_still_gets_its_message() -> None:
    assert TextFormatter().format(_record("plain %d", 7)).endswith("]: plain 7")
    assert json.loads(JsonFormatter().format(_record("plain %d", 7)))["message"] == "plain 7"


def test_a_line_with_an_explicit_queue_id_and_bad_arguments_is_reported_not_raised(capsys) -> None:
    """As before the message was kept by the filter: a malformed call fails inside emit (handleError
    reports it on stderr), not in the caller."""
    handler, out = _handler(TextFormatter())
    record = _record("%d items", "not a number")
    record.queue_id = "1krWY8jZPYRbMTXL"
    handler.handle(record)
    assert out.getvalue() == "" and "Logging error" in capsys.readouterr().err


_SETUP_AND_LOG = """
import logging, sys
from pipeline.toolkit.logs import setup_logging
setup_logging("info", sys.argv[1], sys.stdout)
flags = (logging._srcfile, logging.logThreads, logging.logMultiprocessing, logging.logProcesses)
log = logging.getLogger("smtpgate.ingress")
def lines():
    log.info("queue_id=%s session=%s accepted from=<%s> rcpts=%d", "1krWY8jZPYRbMTXL", "ab12", "a@example.com", 1)
    log.warning("1krWY8jZPYRbMTXL: to=<%s>, status=deferred", "b@example.net")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("session=%s internal error", "ab12")
lines()
print("flags", flags[0] is None, flags[1:])
logging._srcfile, logging.logThreads, logging.logMultiprocessing = __import__("os").path.normcase(
    logging.addLevelName.__code__.co_filename), True, True  # the defaults again: the same lines
lines()
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_records_without_caller_and_thread_fields_give_the_same_lines(fmt, tmp_path) -> None:
    """``setup_logging`` stops records from collecting what neither format prints; the lines are those
    the default record fields give (a process of its own: the switches are process-wide)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _SETUP_AND_LOG, fmt],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    ).stdout
    fast, _, rest = out.partition("flags True (False, False, True)\n")
    assert rest, out  # the switches were set, the pid kept

    def masked(text: str) -> str:
        return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", "<time>", text)

    assert fast and masked(fast) == masked(rest)
    assert "Traceback" in fast and "ValueError: boom" in fast
