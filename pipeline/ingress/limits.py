"""In-memory counters for the ingress: connections per IP and in total, AUTH failures per IP,
messages per minute per credential. One gateway process owns them (several ingress nodes behind a
load balancer each enforce their own share).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque


class ConnectionLimiter:
    """Counts open connections in total and per client IP."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: dict[str, int] = defaultdict(int)

    def acquire(self, ip: str) -> str | None:
        """Count a new connection; ``None`` if allowed, else ``"total"`` or ``"ip"`` (not counted)."""
        if self.total >= self.max_total:
            return "total"
        if self.per_ip[ip] >= self.max_per_ip:
            return "ip"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


class SlidingWindow:
    """Events per key within the last ``window`` seconds."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._events: dict[str, deque[float]] = {}

    def _prune(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def count(self, key: str) -> int:
        events = self._prune(key, time.monotonic())
        return len(events) if events else 0

    def add(self, key: str) -> int:
        """Record one event; returns the count in the window including it."""
        now = time.monotonic()
        events = self._prune(key, now)
        if events is None:
            events = self._events[key] = deque()
        events.append(now)
        if len(self._events) > 100_000:  # bound memory under a flood of distinct keys
            for stale in [k for k in list(self._events) if self._prune(k, now) is None]:
                self._events.pop(stale, None)
        return len(events)
