"""Child processes that die with the process that started them (Linux PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGTERM it when its parent dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def die_with_parent():
    """The `preexec_fn` for Popen. The signal fires when the *thread* that spawned the child
    exits, so spawn long-lived children from the main thread."""
    return _die_with_parent if sys.platform.startswith("linux") else None
