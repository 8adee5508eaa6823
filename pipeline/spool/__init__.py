"""The spool: where an accepted message is made durable before the client hears ``250``.

:class:`~pipeline.ports.Spool` is the interface every caller uses (the ingress sees only its
:class:`~pipeline.ports.SpoolWriter` half); :class:`~pipeline.spool.sqlite.SqliteSpool` is the
embedded backend. A PostgreSQL backend implements the same methods (``claim`` becomes
``SELECT ... FOR UPDATE SKIP LOCKED`` with the same lease column).
"""

from __future__ import annotations

from pipeline.contract.vocabulary import FINAL_STATES, RecipientState
from pipeline.ports import QueuedMessage, RecipientOutcome, Spool

STATES = tuple(RecipientState)

__all__ = ["FINAL_STATES", "STATES", "QueuedMessage", "RecipientOutcome", "RecipientState", "Spool"]
