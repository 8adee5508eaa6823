"""Group commit: concurrent callers' writes committed by one writer, in one transaction.

Why: a commit costs one fsync (SQLite) or one WAL flush and round trip (PostgreSQL). N SMTP
sessions finishing DATA together, or N recipients' results, then cost one commit, not N, and each
caller still returns only after *its* write is committed (the ``250`` rule). The commit function
runs in a thread (``asyncio.to_thread``) so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``await submit(item)`` -> the result the batch's ``commit`` gave for that item.

    ``commit(items)`` writes every item in one transaction and returns one result per item; if it
    raises, every caller of that batch gets the exception (nothing of the batch was committed).
    ``after`` runs in the event loop after each successful commit (e.g. wake the delivery service).
    """

    def __init__(self, commit: Callable[[list[T]], Sequence[R]], after: Callable[[], None] | None = None) -> None:
        self._commit = commit
        self._after = after
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flushing = False

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await asyncio.to_thread(self._commit, [item for item, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
                if self._after is not None:
                    self._after()
        finally:
            self._flushing = False
