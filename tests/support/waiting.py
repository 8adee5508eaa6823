"""One way for a test to wait on what a server does in its own callbacks, threads or processes
(a session's bookkeeping, a queue read from another connection, a worker's exit): poll, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "the condition") -> None:
    """Poll ``condition()`` every 20 ms until it is true; fail the test naming ``what`` after
    ``timeout`` seconds (a generous bound: a loaded CI machine is slow, never wrong)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)
