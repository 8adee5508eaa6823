"""Source IP pools: named sets of local addresses, each with the HELO name its PTR record gives.

A copy leaves from the pool its campaign names (``[pool_selection] campaigns``), else its
credential's, else ``default``; without any, the system picks the source address as before.
Within a pool the addresses take turns; an address with a daily cap (``daily_cap``, or the day's
step of a ``warmup`` schedule counted from ``warmup_start``) that has used it is skipped, and when
every address of the pool has, the copy waits for the next day (postponed, no attempt used).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import Config, PoolAddress, PoolSelectionSection
from pipeline.egress.state import EgressState

log = logging.getLogger("smtpgate.egress")


@dataclass(frozen=True)
class Source:
    """Where a connection comes from: ``address`` (``""``: the system's choice) and the HELO name."""

    address: str
    helo: str
    pool: str = ""


def pool_for(selection: PoolSelectionSection, context: dict[str, Any]) -> str | None:
    """The pool for a spooled message's context record: campaign, then credential, then default."""
    campaign = context.get("campaign_id")
    if campaign and campaign in selection.campaigns:
        return selection.campaigns[campaign]
    credential = (context.get("credential") or {}).get("name")
    if credential and credential in selection.credentials:
        return selection.credentials[credential]
    return selection.default


def daily_cap(address: PoolAddress, today: datetime.date) -> int | None:
    """The address's cap today: the warm-up step for today (the last step holds), within ``daily_cap``."""
    caps = [address.daily_cap] if address.daily_cap else []
    if address.warmup:
        start = address.warmup_start or today
        step = max(0, (today - start).days)
        caps.append(address.warmup[min(step, len(address.warmup) - 1)])
    return min(caps) if caps else None


class SourcePools:
    """Chooses a source per copy and counts what each address sent today."""

    def __init__(
        self, config: Config, helo: str, state: EgressState | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.pools = config.pools
        self.helo = helo
        self.state = state
        self.clock = clock
        self._turn: dict[str, int] = {}
        self._counts: dict[tuple[str, str], int] = {}

    def _today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.clock()).date()

    def sent_today(self, address: str) -> int:
        day = self._today().isoformat()
        key = (address, day)
        if key not in self._counts:
            self._counts[key] = self.state.count(address, day) if self.state is not None else 0
        return self._counts[key]

    def choose(self, pool: str | None) -> tuple[Source | None, float]:
        """``(source, 0)``; or ``(None, retry_at)`` when every address of the pool used its cap today."""
        if not pool or pool not in self.pools:
            return Source("", self.helo), 0.0
        addresses = self.pools[pool].addresses
        today = self._today()
        start = self._turn.get(pool, 0)
        for i in range(len(addresses)):
            candidate = addresses[(start + i) % len(addresses)]
            cap = daily_cap(candidate, today)
            if cap is not None and self.sent_today(candidate.address) >= cap:
                continue
            self._turn[pool] = (start + i + 1) % len(addresses)
            return Source(candidate.address, candidate.helo or self.helo, pool), 0.0
        tomorrow = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time())
        return None, tomorrow.timestamp()

    def count(self, source: Source) -> None:
        """One more copy handed to the next hop from ``source`` today."""
        if not source.address:
            return
        self.sent_today(source.address)
        day = self._today().isoformat()
        self._counts[(source.address, day)] += 1
        if self.state is not None and self._capped(source):
            try:
                self.state.add_count(source.address, day, 1)
            except Exception:
                log.exception("counting a copy from %s failed", source.address)

    def _capped(self, source: Source) -> bool:
        pool = self.pools.get(source.pool)
        return pool is not None and any(
            a.address == source.address and (a.daily_cap or a.warmup) for a in pool.addresses
        )
