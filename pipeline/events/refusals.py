"""Refusals as ``rejected`` events, aggregated so that a flood cannot fill the disk.

Every 4xx/5xx the gateway answers (SMTP at connect, HELO, AUTH, MAIL, RCPT or DATA; the HTTP send
API) is noted here with its reply, phase, client address and, when known, credential, sender and
recipient. The first refusal of a kind, keyed by (client address, phase, reply code, credential), is
stored at once with ``count: 1``; the same kind again within ``window`` seconds is only counted, and
when the window closes one more event carries how many there were (``count``, ``repeated: true``).
So one client hammering one refusal costs at most two stored events a minute; new kinds stored per
window are capped for all clients together (``max_stored``, 600 a minute: a botnet of many addresses
costs at most about twice that), and so is the number of kinds tracked at once (``max_keys``); beyond
either, refusals are counted in ``/metrics`` only. Noting is a dict update; storing runs in a task, off the SMTP reply's path.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.contract.context import Event
from pipeline.contract.vocabulary import EventType
from pipeline.ports import EventSink, Metrics

log = logging.getLogger("smtpgate.events.refusals")

PHASES = ("connect", "helo", "auth", "mail", "rcpt", "data", "command")
"""Where a refusal happened: the SMTP phases, and ``command`` for any other SMTP command. An HTTP send
names the phase its check stands for (``mail`` for a sender domain...), with ``listener`` ``api``."""

_REPLY = re.compile(r"^([45]\d\d)[ -](?:([45]\.\d{1,3}\.\d{1,3}) )?(.*)$", re.DOTALL)

Key = tuple[str, str, int, str | None]


def parse_reply(reply: str) -> tuple[int, str | None, str]:
    """``(code, enhanced code or None, text)`` of an SMTP reply (its first line; later lines joined)."""
    lines = reply.replace("\r\n", "\n").split("\n")
    m = _REPLY.match(lines[0])
    if m is None:
        return 0, None, reply[:500]
    text = " ".join([m.group(3), *(_REPLY.sub(r"\3", line) for line in lines[1:])]).strip()
    return int(m.group(1)), m.group(2), text[:500]


@dataclass
class _Slot:
    """One kind of refusal in its current window."""

    until: float
    first: float
    repeats: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class RefusalEvents:
    """Turns noted refusals into ``rejected`` events on the :class:`~pipeline.ports.EventSink`."""

    def __init__(
        self,
        sink: EventSink,
        metrics: Metrics | None = None,
        *,
        window: float = 60.0,
        max_keys: int = 10_000,
        max_stored: int = 600,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.sink, self.metrics = sink, metrics
        self.window, self.max_keys, self.max_stored = window, max_keys, max_stored
        self._budget_until, self._stored = 0.0, 0  # new kinds stored in the current window (all clients)
        self.clock, self.wall = clock, wall
        self._slots: dict[Key, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def _count(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics[f"rejected_events_total:{what}"] += 1

    def note(
        self,
        *,
        reply: str,
        phase: str,
        client_ip: str,
        credential: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        listener: str | None = None,
    ) -> None:
        """One refusal was answered. Cheap: a dict update, and at most one task to store an event."""
        code, enhanced, text = parse_reply(reply)
        details = {
            "code": code,
            "enhanced": enhanced,
            "text": text,
            "phase": phase,
            "client_ip": client_ip,
            "sender": sender,
            "recipient": recipient,
            "listener": listener,
        }
        key: Key = (client_ip, phase, code, credential)
        now = self.clock()
        slot = self._slots.get(key)
        if slot is not None and now < slot.until:
            slot.repeats += 1
            slot.last = details
            self._count("aggregated")
            self._arm()
            return
        if slot is not None:
            self._close(key, slot)
        if len(self._slots) >= self.max_keys:
            self.flush(due_only=True)
            if len(self._slots) >= self.max_keys:
                self._count("dropped")
                return
        if now >= self._budget_until:
            self._budget_until, self._stored = now + self.window, 0
        if self._stored >= self.max_stored:  # many clients at once (a botnet): count, do not store
            self._count("dropped")
            return
        self._stored += 1
        self._slots[key] = _Slot(until=now + self.window, first=self.wall())
        self._count("stored")
        self._store(credential, details, count=1)

    def _store(
        self,
        credential: str | None,
        details: dict[str, Any],
        *,
        count: int,
        repeated: bool = False,
        since: float | None = None,
    ) -> None:
        data = {k: v for k, v in details.items() if v is not None and k not in ("recipient",)}
        data["count"] = count
        if repeated:
            data["repeated"] = True
            data["since"] = since
        event = Event(
            EventType.REJECTED, recipient=details.get("recipient"), credential=credential, data=data
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test calling note() synchronously): nothing can store it
            log.warning("rejected event not stored: no running event loop")
            return
        task = loop.create_task(self.sink.emit(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close(self, key: Key, slot: _Slot) -> None:
        """A window ended: its repeats become one event (``repeated``, with their count)."""
        self._slots.pop(key, None)
        if slot.repeats:
            self._store(key[3], slot.last, count=slot.repeats, repeated=True, since=slot.first)

    def _arm(self) -> None:
        """Close windows with repeats when they end, even if no refusal of their kind comes again."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.window, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush(due_only=True)
        if any(s.repeats for s in self._slots.values()):
            self._arm()

    def flush(self, *, due_only: bool = False) -> None:
        """Close windows (those that ended, or all): their repeats become events."""
        now = self.clock()
        for key, slot in list(self._slots.items()):
            if not due_only or now >= slot.until:
                self._close(key, slot)

    async def aclose(self) -> None:
        """At shutdown: every window closed, every pending event stored."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
