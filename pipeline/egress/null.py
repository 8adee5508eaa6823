"""The null egress: every copy is accepted and thrown away (load tests, dry runs)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.egress.base import Copy, DeliveryResult


class NullEgress:
    def __init__(self, name: str = "null") -> None:
        self.name = name

    async def deliver(self, copies: Sequence[Copy]) -> list[DeliveryResult]:
        return [DeliveryResult(c.recipient, "sent", "2.0.0", "discarded by the null egress", "none") for c in copies]

    async def close(self) -> None:
        return None
