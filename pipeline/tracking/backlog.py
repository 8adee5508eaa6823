"""Tracking events the event store could not take, held in memory and written when it is back.

Why: a click or an open needs no database to be answered (the token carries everything), so an
outage of the event store (PostgreSQL restarting, unreachable) must not break links, and the
events should not be lost either. They wait here, in arrival order, bounded (``LIMIT``: what
does not fit is dropped, counted and logged, never blocking a redirect), and one task writes
them in order once the store answers again. Each event keeps the unique ``origin`` key of its
first attempt, so an attempt whose reply was lost (written, but timed out here) and its retry
store the event once.

In memory only: a restart during an outage loses what is held (logged with the count at stop).
Unsubscribes are not held: they answer ``503`` so the mail client retries (RFC 8058), because a
lost unsubscribe would keep mailing someone who asked to stop.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from aiohttp import web

from pipeline.contract.context import Event
from pipeline.ports import EventSink, Metrics

log = logging.getLogger("smtpgate.tracking")

LIMIT = 10_000
"""Events held at most (about 1 KB each): some minutes of a busy campaign's clicks and opens."""
BATCH = 100
"""Events written per attempt: they share one group commit, in order."""
RETRY_MIN = 0.25
RETRY_MAX = 5.0
"""Seconds between attempts while the store still fails: doubling from the first to the last."""
WRITE_WAIT = 30.0
"""Seconds one attempt may take before it counts as failed (the pool's own wait is shorter)."""


class EventBacklog:
    """A bounded FIFO of ``(event, origin)`` and the task that writes it to the event sink."""

    def __init__(self, sink: EventSink, metrics: Metrics, limit: int = LIMIT) -> None:
        self.sink = sink
        self.metrics = metrics
        self.limit = limit
        self._items: collections.deque[tuple[Event, str]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._held = self._written = self._dropped = 0  # during the current outage, for its log lines

    def __len__(self) -> int:
        return len(self._items)

    def hold(self, event: Event, origin: str) -> bool:
        """Queue an event for a later write; ``False`` when the backlog is full (dropped, counted)."""
        if len(self._items) >= self.limit:
            self._dropped += 1
            self.metrics["tracking_backlog_total:dropped"] += 1
            if self._dropped == 1:
                log.error("tracking backlog full (%d events): dropping new %s/%s events until the event store "
                          "is back (counted in smtpgate_tracking_backlog_total{result=\"dropped\"})",
                          self.limit, "opened", "clicked")
            return False
        if not self._items and not self._held:
            log.warning("event store not answering: holding tracking events in memory (at most %d) until it is back",
                        self.limit)
        self._items.append((event, origin))
        self._held += 1
        self.metrics["tracking_backlog_total:held"] += 1
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tracking-backlog")
        assert self._wake is not None
        self._wake.set()
        return True

    async def _run(self) -> None:
        attempt = 0
        while self._items:
            batch = [self._items[i] for i in range(min(BATCH, len(self._items)))]
            try:
                # submitted in order: the event store's group commit writes them in this order
                await asyncio.wait_for(
                    asyncio.gather(*(self.sink.emit(e, strict=True, origin=o) for e, o in batch)), WRITE_WAIT
                )
            except Exception:  # still away: wait and try again (the outage itself is logged once elsewhere)
                attempt += 1
                await asyncio.sleep(min(RETRY_MAX, RETRY_MIN * 2 ** (attempt - 1)))
                continue
            attempt = 0
            for _ in batch:
                self._items.popleft()
            self._written += len(batch)
            self.metrics["tracking_backlog_total:written"] += len(batch)
        log.warning("event store back: wrote %d held tracking event(s) in order, dropped %d",
                    self._written, self._dropped)
        self._held = self._written = self._dropped = 0

    async def close(self) -> None:
        """Stop writing; what is still held is lost (logged and counted as dropped)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._items:
            n = len(self._items)
            self.metrics["tracking_backlog_total:dropped"] += n
            log.error("%d held tracking event(s) not written (the event store was unavailable until shutdown): lost", n)
            self._items.clear()


BACKLOG: web.AppKey[EventBacklog] = web.AppKey("backlog", EventBacklog)
"""Where the tracking app keeps its backlog (the service reads its size for ``/metrics``)."""
