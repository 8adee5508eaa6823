"""The one-statement-in-a-transaction shape both databases are driven through.

Why a protocol of its own: an event is written by the event store's code inside whichever
transaction is open (its own, or the spool's when a result and its event commit together), on
SQLite or PostgreSQL alike; the code only needs "run this statement here, give me rows and rowcount".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Tx(Protocol):
    """One statement inside an open transaction (``?`` placeholders): its rows (``RETURNING`` too) and rowcount."""

    def __call__(self, sql: str, args: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]: ...

