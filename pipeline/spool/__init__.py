"""The spool: where an accepted message is made durable before the client hears ``250``.

:class:`Spool` is the interface every caller uses; :class:`~pipeline.spool.sqlite.SqliteSpool`
is the embedded backend. A PostgreSQL backend implements the same methods.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.context import MessageContext


class Spool(Protocol):
    async def enqueue(self, ctx: MessageContext, data: bytes, recipients: list[str]) -> None:
        """Commit the message durably (fsync'd) before returning; raise on failure."""
        ...

    def close(self) -> None: ...
