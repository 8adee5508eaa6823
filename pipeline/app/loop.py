"""The event loop ``serve`` runs the main process on: asyncio's own, or uvloop (libuv, in C).

``[gateway] event_loop``: ``asyncio``, ``uvloop`` (a config error when it is not installed), or
``auto``: uvloop when it is installed (the ``smtpgate[speed]`` extra), else asyncio's. Only the
main process's loop changes; every service runs on either (tests/test_event_loop.py runs the
listeners, TLS, signals and subprocesses under both).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name(setting: str) -> str:
    """The loop ``setting`` stands for here: ``uvloop`` or ``asyncio``."""
    if setting == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return setting


def loop_factory(setting: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop for ``setting`` (``None``: asyncio's default)."""
    if loop_name(setting) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run_on(setting: str, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``setting`` chooses."""
    with asyncio.Runner(loop_factory=loop_factory(setting)) as runner:
        return runner.run(main)
