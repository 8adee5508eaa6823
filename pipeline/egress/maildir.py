"""Maildir egress: each copy becomes a file, written with the Maildir protocol.

The file is written and fsync'd in ``tmp/`` under a unique name, then renamed into ``new/``
(and the directory fsync'd), so a reader never sees half a message and a crash leaves at most
a stray file in ``tmp/``. The default egress, so a newcomer sees exactly what would be sent.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.egress.base import Copy, DeliveryResult

_counter = itertools.count()


class MaildirEgress:
    def __init__(self, path: Path, name: str = "maildir") -> None:
        self.name = name
        self.path = Path(path)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def _ensure(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def _write(self, copy: Copy) -> str:
        self._ensure()
        now = time.time()
        unique = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{next(_counter)}.{self._host}"
        tmp = self.path / "tmp" / unique
        header = f"Return-Path: <{copy.mail_from}>\r\nDelivered-To: {copy.recipient}\r\n".encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, header)
            view = memoryview(copy.data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path / "new" / unique)
        dir_fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return unique

    async def deliver(self, copies: Sequence[Copy]) -> list[DeliveryResult]:
        results = []
        for copy in copies:
            try:
                unique = await asyncio.to_thread(self._write, copy)
            except OSError as exc:
                results.append(
                    DeliveryResult.deferred(copy.recipient, "4.3.0", f"maildir {self.path}: {exc.strerror or exc}")
                )
            else:
                results.append(
                    DeliveryResult(copy.recipient, "sent", "2.0.0", f"delivered to maildir as {unique}", f"maildir[{self.path}]")
                )
        return results

    async def close(self) -> None:
        return None
