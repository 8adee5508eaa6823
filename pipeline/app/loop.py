"""The event loop ``serve`` runs the main process on: asyncio's own, or uvloop (libuv, in C).

``[gateway] event_loop``: ``asyncio``, ``uvloop`` (the ``smtpgate[speed]`` extra; a config error
when it is not installed), or ``auto``, the default: asyncio's loop for now. uvloop measured no
better for the gateway (the main thread's CPU per message and the ingress rate within noise of
asyncio's, RSS 1-2 MiB more: docs/benchmarks.md, "The main process: imports, and the event
loop"), so ``auto`` does not pick it; the
setting exists so that it can once it does. Only the main process's loop changes; every service
runs on either (tests/test_event_loop.py: TLS listeners, the worker, HTTP listeners, SIGTERM).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


AUTO = "asyncio"
"""What ``auto`` means: the loop that measured best for the gateway (uvloop did not: see above)."""


def loop_name(setting: str) -> str:
    """The loop ``setting`` stands for here: ``uvloop`` or ``asyncio``."""
    return AUTO if setting == "auto" else setting


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
