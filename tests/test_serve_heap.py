"""``smtpgate serve`` freezes what start-up left alive, once the services have started: the
collector's full passes then walk only what mail traffic allocates (issue 17)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import weakref
from types import SimpleNamespace
from typing import Any

from pipeline.app.cli import serve


class StartedGateway:
    """Just enough of a Gateway for ``run_gateway``: it records when the heap was frozen."""

    def __init__(self, tmp_path: Any) -> None:
        self.config = SimpleNamespace(data_dir=tmp_path, limits=SimpleNamespace(shutdown_grace=0.0))
        self.services: list[Any] = []
        self.frozen_at_start: int | None = None
        self.stopped = False

    async def start(self) -> None:
        self.frozen_at_start = gc.get_freeze_count()
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)  # as systemd stops it

    async def stop(self, grace: float | None = None) -> None:
        self.stopped = True


async def test_the_heap_left_by_start_up_is_frozen_after_the_services_start(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "startup_summary", lambda gateway: [])
    gc.unfreeze()
    try:
        gateway = StartedGateway(tmp_path)
        await serve.run_gateway(gateway)  # type: ignore[arg-type]
        assert gateway.frozen_at_start == 0  # nothing frozen before the services started
        assert gc.get_freeze_count() > 1000  # the test process's modules, at least
        assert gateway.stopped
    finally:
        gc.unfreeze()  # the rest of the test session collects as before


def test_cycles_made_by_traffic_after_the_freeze_are_still_collected():
    """What mail traffic leaves in reference cycles after start-up is still the collector's."""

    class Node:
        pass

    gc.unfreeze()
    try:
        serve.freeze_startup_heap()
        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # a cycle: reference counting alone does not free it
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
