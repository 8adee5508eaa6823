"""Worker processes never outlive the gateway.

The processing workers are children of the gateway process (:class:`~pipeline.delivery.workers.WorkerPool`
starts them itself). Workers ignore SIGTERM and SIGINT (the gateway decides when they stop, so a
drain does not cut a message in half; they are started with both blocked, so not even a signal
that arrives while the interpreter starts reaches them), so without help they would survive a
gateway that is killed, reparented to init, forever.

Three ties, strongest first:

1. On Linux each worker asks the kernel for SIGKILL when its parent, the gateway, exits
   (``prctl(PR_SET_PDEATHSIG)``): works even while the worker is stuck in C code holding the GIL.
2. A daemon thread in each worker watches the gateway process (a pidfd where the kernel has
   them, else polling its parent pid every second) and exits the worker when it is gone: the
   fallback on other systems, and the check for a gateway that died before step 1 ran.
3. A worker between tasks reads EOF on its pipe when the gateway's end closes, and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import threading
import time

log = logging.getLogger("smtpgate.workers")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_ORPHANED = 70  # EX_SOFTWARE: nobody is left to read the status anyway


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as alive: use a pidfd to see exits)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(gateway_pid: int, *, interval: float = 1.0) -> None:
    """Tie this (worker) process's life to ``gateway_pid`` and to its own parent."""
    parent = os.getppid()
    set_parent_death_signal()
    if os.getppid() != parent or not alive(gateway_pid):  # gone before the kernel was asked
        os._exit(EXIT_ORPHANED)
    threading.Thread(
        target=_watch, args=(gateway_pid, parent, interval), name="smtpgate-lifeline", daemon=True
    ).start()


def _watch(gateway_pid: int, parent: int, interval: float) -> None:
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):  # no pidfd_open: Python < 3.9, Linux < 5.3, not Linux
        pidfd = os.pidfd_open(gateway_pid)
    while True:
        if pidfd is not None:
            ready, _, _ = select.select([pidfd], [], [], interval)
            if ready:  # a pidfd becomes readable when the process exits
                break
        else:
            time.sleep(interval)
        if os.getppid() != parent or (pidfd is None and not alive(gateway_pid)):
            break
    log.warning("worker %d: the gateway process %d is gone; exiting", os.getpid(), gateway_pid)
    os._exit(EXIT_ORPHANED)
