"""A worker's two background threads: the heartbeat (liveness only) and the reporter.

The heartbeat makes one small write per interval on a database engine of its own and shares no
lock with execution, so no checkpoint load, long node or slow models folder can make a healthy
worker look dead. When the write finds the row no longer this process's (it was presumed dead
and reaped), it tells the runtime, whose running attempt is stale, and registers again.

The reporter writes what changed in the worker's report (memory, loaded models, model files,
current prompt), reaps lost workers' prompts, and runs the dispatcher's periodic tick. Walking
the models folder is timed and repeated at most every ten walk-durations (a network share with
many files is not walked every beat), never less often than needed to see a new file within a
few beats on a local disk.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from farm.db.session import make_database
from farm.services import workers

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, settings, info: workers.WorkerInfo, on_presumed_dead: Callable[[object], None]):
        self.settings = settings
        self.info = info
        self.on_presumed_dead = on_presumed_dead
        self.database = make_database(settings.database_url, pool_size=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="farm-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.database.dispose()

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                ours = workers.beat(self.database, self.info.name, self.info.session)
                if not ours and not self._stop.is_set():
                    self.on_presumed_dead(self.database)
            except Exception as exception:  # noqa: BLE001 - the database is down: keep beating until it is back
                if not failing:
                    log.error("heartbeat failed (%s); retrying every %.1f s", exception, self.settings.heartbeat_seconds)
                failing = True
                continue
            if failing:
                log.info("heartbeat written again")
                failing = False


class Reporter:
    def __init__(self, settings, info: workers.WorkerInfo, database, refresh: Callable[[bool], None],
                 tick: Callable[[], None]):
        self.settings = settings
        self.info = info
        self.database = database
        self.refresh = refresh  # refresh(walk_models_folder) updates `info`
        self.tick = tick  # reap and dispatch
        self._written: dict = {}
        self._walk_every = settings.heartbeat_seconds
        self._walked_at = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="farm-report", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def written(self) -> None:
        """The whole report was just written (registration): only changes go out from now on."""
        self._written = {key: getattr(self.info, key) for key in workers.REPORTED}

    def report_now(self) -> None:
        walk = time.monotonic() - self._walked_at >= self._walk_every
        started = time.monotonic()
        self.refresh(walk)
        if walk:
            self._walked_at = time.monotonic()
            self._walk_every = max(self.settings.heartbeat_seconds, 10 * (self._walked_at - started))
        current = {key: getattr(self.info, key) for key in workers.REPORTED}
        changed = {key: value for key, value in current.items() if self._written.get(key, object()) != value}
        if workers.report(self.database, self.info, changed):
            self._written = current

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                self.report_now()
                self.tick()
            except Exception:  # noqa: BLE001 - a database or broker hiccup must not kill the worker
                log.exception("worker report failed")
