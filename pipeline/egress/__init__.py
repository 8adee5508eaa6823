"""Egress: where each processed copy goes (``smtp`` smarthost, ``mx`` direct, ``maildir``, ``null``).

Every egress takes a batch of :class:`~pipeline.egress.base.Copy` and returns one
:class:`~pipeline.egress.base.DeliveryResult` per copy; :class:`EgressRouter` picks the egress
for a credential (sandbox credentials always land in ``<data_dir>/sandbox``).
"""

from __future__ import annotations

from pipeline.egress.base import Copy, DeliveryResult, Egress
from pipeline.egress.router import EgressRouter, build_egress

__all__ = ["Copy", "DeliveryResult", "Egress", "EgressRouter", "build_egress"]
