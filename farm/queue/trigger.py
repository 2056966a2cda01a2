"""Runs the dispatcher in the background when asked, coalescing bursts of requests.

A web process asks for a dispatch after every accepted prompt; under load, many requests
collapse into one pass, and passes are at least `min_interval` apart so that a burst of
submissions is not slowed by a dispatch pass per prompt. (Workers dispatch for themselves when
they finish, so the web only matters for workers that are already idle, and those it wakes
first: farm.queue.wake.) The thread starts on first use, so it is created after a fork.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from farm.queue.wake import WAKE_GRACE

log = logging.getLogger(__name__)


class DispatchTrigger:
    """Passes after requests, at least `min_interval` apart. With `wake` (farm.queue.wake: it
    wakes the listening workers and says how many there were), each request first wakes the idle
    workers (at most every `wake_interval`), and a pass follows `grace` after a wake that reached
    some, at once after one that reached none. Waiting for a pass never delays the next wake."""

    def __init__(self, dispatcher, min_interval: float = 0.01, wake: Callable[[], int] | None = None,
                 grace: float = WAKE_GRACE, wake_interval: float = 0.002):
        self.dispatcher = dispatcher
        self.min_interval = min_interval
        self.wake = wake
        self.grace = grace
        self.wake_interval = wake_interval
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="farm-dispatch", daemon=True)
                    self._thread.start()
        self._wanted.set()

    def _loop(self) -> None:
        pass_due = wake_due = None  # monotonic times of the next pass and wake (None: none wanted)
        last_wake = next_pass = float("-inf")  # the last wake; the earliest the next pass may run
        while True:
            dues = [due for due in (pass_due, wake_due) if due is not None]
            if self._wanted.wait(max(0.0, min(dues) - time.monotonic()) if dues else None):
                self._wanted.clear()
                now = time.monotonic()
                if self.wake is None:
                    pass_due = _earliest(pass_due, max(now, next_pass))
                elif wake_due is None:
                    wake_due = max(now, last_wake + self.wake_interval)
            now = time.monotonic()
            if wake_due is not None and now >= wake_due:
                wake_due, last_wake = None, now
                woken = self.wake()
                pass_due = _earliest(pass_due, max(now + (self.grace if woken > 0 else 0.0), next_pass))
                now = time.monotonic()
            if pass_due is not None and now >= pass_due:
                pass_due, next_pass = None, now + self.min_interval
                try:
                    self.dispatcher.dispatch()
                except Exception:  # noqa: BLE001 - the next request or a worker's tick retries
                    log.exception("dispatch failed")


def _earliest(due: float | None, other: float) -> float:
    return other if due is None else min(due, other)
