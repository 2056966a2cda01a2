"""Runs the dispatcher in the background when asked, coalescing bursts of requests.

A web process asks for a dispatch after every accepted prompt; under load, many requests
collapse into one pass, and passes are at least `min_interval` apart so that a burst of
submissions is not slowed by a dispatch pass per prompt. (Workers dispatch for themselves when
they finish, so the web only matters for workers that are already idle.) The thread starts on
first use, so it is created after a fork.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class DispatchTrigger:
    def __init__(self, dispatcher, min_interval: float = 0.01):
        self.dispatcher = dispatcher
        self.min_interval = min_interval
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
        while True:
            self._wanted.wait()
            self._wanted.clear()
            started = time.monotonic()
            try:
                self.dispatcher.dispatch()
            except Exception:  # noqa: BLE001 - the next request or a worker's tick retries
                log.exception("dispatch failed")
            time.sleep(max(0.0, self.min_interval - (time.monotonic() - started)))
