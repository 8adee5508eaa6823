"""A small asyncio driver for headless chromium over ``--remote-debugging-pipe`` (Chrome DevTools
Protocol), for tests that click through pages served by a gateway running in the same event loop
(tests/test_visual_fidelity.py drives chromium synchronously; here the server must keep running
while the test waits for the browser, so nothing may block the loop).

Waiting is on protocol events (the page's ``load``), never on time.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--disable-dev-shm-usage", "--remote-debugging-pipe",
)  # fmt: skip
TIMEOUT = 30.0


class Browser:
    """One chromium process; commands and their answers are matched by id, events are handed to
    whoever waits for them."""

    def __init__(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader, write_fd: int,
                 transport: asyncio.ReadTransport, log: Any) -> None:  # fmt: skip
        self.proc, self._reader, self._w, self._transport, self._log = proc, reader, write_fd, transport, log
        self._next = 0
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]] = []
        self._pump = asyncio.create_task(self._read_forever())

    @classmethod
    async def start(cls, profile: Path, log_path: Path) -> Browser:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        assert exe, "chromium is not installed (.ci/run installs Debian's chromium)"
        to_r, w = os.pipe()
        r, from_w = os.pipe()
        # /usr/bin/chromium is a shell wrapper: bash moves our ends to fds 3 and 4 before exec.
        hi_r = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_r)
        os.close(from_w)
        log = log_path.open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", f'exec "$0" "$@" 3<&{hi_r} 4>&{hi_w} {hi_r}<&- {hi_w}>&-', exe, *FLAGS,
                f"--user-data-dir={profile}", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=log, pass_fds=(hi_r, hi_w), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(hi_r)
            os.close(hi_w)
        reader = asyncio.StreamReader(limit=256 * 1024 * 1024)  # screenshots arrive as one message
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0)
        )
        return cls(proc, reader, w, transport, log)

    async def _read_forever(self) -> None:
        try:
            while True:
                raw = await self._reader.readuntil(b"\0")
                msg = json.loads(raw[:-1])
                if "id" in msg:
                    fut = self._answers.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    continue
                for waiter in list(self._waiters):
                    pred, fut = waiter
                    if not fut.done() and pred(msg):
                        fut.set_result(msg)
                        self._waiters.remove(waiter)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            for fut in [*self._answers.values(), *(f for _, f in self._waiters)]:
                if not fut.done():
                    fut.set_exception(EOFError(f"chromium closed the pipe: {exc}"))

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        """Send one command and return its result (a protocol error raises)."""
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[self._next] = fut
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data) :]
        answer = await asyncio.wait_for(fut, TIMEOUT)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def expect(self, pred: Callable[[dict[str, Any]], bool]) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event that ``pred`` accepts (register before causing it)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return fut

    async def new_tab(self) -> Tab:
        target = (await self.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session = (await self.call("Target.attachToTarget", {"targetId": target, "flatten": True}))[
            "sessionId"
        ]
        await self.call("Page.enable", session=session)
        await self.call("Page.setLifecycleEventsEnabled", {"enabled": True}, session=session)
        await self.call("Network.enable", session=session)
        return Tab(self, session)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.call("Browser.close"), 10)
            await asyncio.wait_for(self.proc.wait(), 10)
        except (TimeoutError, EOFError, RuntimeError):
            if self.proc.returncode is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the process group this test started
                await self.proc.wait()
        finally:
            self._pump.cancel()
            self._transport.close()
            os.close(self._w)
            self._log.close()


class Tab:
    """One page: navigate, act in it, read it, photograph it."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.call(method, params, self.session)

    def _load(self) -> asyncio.Future[dict[str, Any]]:
        return self.browser.expect(
            lambda m: m.get("sessionId") == self.session and m.get("method") == "Page.loadEventFired"
        )

    async def goto(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        loaded = self._load()
        result = await self.call("Page.navigate", {"url": url})
        assert not result.get("errorText"), result
        await asyncio.wait_for(loaded, TIMEOUT)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate_by(self, expression: str) -> None:
        """Run ``expression`` (a click, a form submission) and wait for the page it leads to."""
        loaded = self._load()
        await self.evaluate(expression)
        await asyncio.wait_for(loaded, TIMEOUT)

    async def fill(self, selector: str, value: str) -> None:
        """Type into a field as a person does (focus, insert text), not by setting ``value``."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).select && "
                            f"document.querySelector({json.dumps(selector)}).select()")  # fmt: skip
        await self.call("Input.insertText", {"text": value})

    async def click(self, selector: str) -> None:
        """Click the element with the mouse, at its centre, and wait for the page it leads to."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        loaded = self._load()
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                         "clickCount": 1})  # fmt: skip
        await asyncio.wait_for(loaded, TIMEOUT)

    async def set_width(self, width: int, height: int = 900) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                               "deviceScaleFactor": 1, "mobile": width < 600})  # fmt: skip

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
