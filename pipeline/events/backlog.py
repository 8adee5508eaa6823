"""Events the event store could not take while the database was away, held in memory and written
when it is back.

Why: a click or an open needs no database to be answered (the token carries everything), and an
``accepted`` event follows a message's COMMIT in a write of its own; an outage of the shared
database (PostgreSQL restarting, unreachable) must not break links nor lose those events. They
wait here, in arrival order, bounded (``LIMIT``: what does not fit is dropped, counted and
logged, never blocking a redirect or a session), and one task writes them in order once the store
answers again. Each event keeps the unique ``origin`` key of its first attempt, so an attempt
whose reply was lost (written, but timed out here) and its retry store the event once. Only
"database unreachable" failures are held (:func:`pipeline.storage.health.unreachable`); an event
the store refuses for another reason is logged and dropped, so it cannot hold up the rest.

In memory only: a restart during an outage loses what is held (logged with the count at stop).
The tracking service's unsubscribes are not held: they answer ``503`` so the mail client retries
(RFC 8058), because a lost unsubscribe would keep mailing someone who asked to stop.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from pipeline.contract.context import Event
from pipeline.ports import EventSink, Metrics
from pipeline.storage.health import unreachable

log = logging.getLogger("smtpgate.events")

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

    def __init__(self, sink: EventSink, metrics: Metrics, source: str, limit: int = LIMIT) -> None:
        self.sink = sink
        self.metrics = metrics
        self.source = source  # "tracking", "events": the label in /metrics and the logs
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
            self.metrics[f"event_backlog_total:{self.source}|dropped"] += 1
            if self._dropped == 1:
                log.error("%s event backlog full (%d events): dropping new events until the event store is back "
                          "(counted in smtpgate_event_backlog_total{result=\"dropped\"})", self.source, self.limit)
            return False
        if not self._items and not self._held:
            log.warning("event store not answering: holding %s events in memory (at most %d) until it is back",
                        self.source, self.limit)
        self._items.append((event, origin))
        self._held += 1
        self.metrics[f"event_backlog_total:{self.source}|held"] += 1
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.source}-backlog")
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
            except Exception as exc:
                if not isinstance(exc, TimeoutError) and not unreachable(exc):
                    # refused for another reason: write them one by one, dropping (logged) what fails
                    await self._one_by_one(batch)
                    continue
                attempt += 1  # still away: wait and try again (the outage itself is logged once elsewhere)
                await asyncio.sleep(min(RETRY_MAX, RETRY_MIN * 2 ** (attempt - 1)))
                continue
            attempt = 0
            for _ in batch:
                self._items.popleft()
            self._written += len(batch)
            self.metrics[f"event_backlog_total:{self.source}|written"] += len(batch)
        log.warning("event store back: wrote %d held %s event(s) in order, dropped %d",
                    self._written, self.source, self._dropped)
        self._held = self._written = self._dropped = 0

    async def _one_by_one(self, batch: list[tuple[Event, str]]) -> None:
        for event, origin in batch:
            try:
                await asyncio.wait_for(self.sink.emit(event, strict=True, origin=origin), WRITE_WAIT)
            except Exception as exc:
                if isinstance(exc, TimeoutError) or unreachable(exc):
                    return  # away again: the rest waits for the next attempt
                log.error("held %s event %s queue_id=%s dropped: the store refused it: %s",
                          self.source, event.type, event.queue_id or "-", exc)
                self._dropped += 1
                self.metrics[f"event_backlog_total:{self.source}|dropped"] += 1
            else:
                self._written += 1
                self.metrics[f"event_backlog_total:{self.source}|written"] += 1
            self._items.popleft()

    async def close(self) -> None:
        """Stop writing; what is still held is lost (logged and counted as dropped)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._items:
            n = len(self._items)
            self.metrics[f"event_backlog_total:{self.source}|dropped"] += n
            log.error("%d held %s event(s) not written (the event store was unavailable until shutdown): lost",
                      n, self.source)
            self._items.clear()
