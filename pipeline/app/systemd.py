"""The systemd notify protocol (``sd_notify(3)``) without libsystemd: one datagram per state.

``Type=notify`` units learn that the gateway is listening (``READY=1``), that it is draining
(``STOPPING=1``), and that its event loop is alive (``WATCHDOG=1`` every half
``WatchdogSec``). Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("smtpgate.systemd")


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``, ``"STOPPING=1"`` ...) to ``$NOTIFY_SOCKET``; False when unset."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            # never block the event loop: a manager that stopped reading must not freeze the gateway
            sock.send(state.encode(), socket.MSG_DONTWAIT)
    except BlockingIOError:
        log.warning("systemd's notify socket %s is full: %s dropped", os.environ.get("NOTIFY_SOCKET"), state)
        return False
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, when it is meant for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


async def watchdog(interval: float) -> None:
    """Ping until cancelled: a blocked event loop stops the pings and systemd restarts the unit."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
