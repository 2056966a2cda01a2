"""Readiness: can this process serve (database reachable and migrated, broker and storage reachable)?

Checked at most every CHECK_SECONDS per process, so a probe storm does not become a database or
broker storm; a failed check is retried on the next probe.
"""

from __future__ import annotations

import threading
import time

CHECK_SECONDS = 2.0


class Readiness:
    def __init__(self, database, sender=None, ttl: float = CHECK_SECONDS, storage=None):
        self.database = database
        self.storage = storage
        self.sender = sender  # something with warm_up() that opens a broker connection (CelerySender)
        self.ttl = ttl
        self._migrated = False  # once at head, a running process stays at head
        self._result: tuple[float, bool, dict] | None = None
        self._lock = threading.Lock()

    def check(self) -> tuple[bool, dict]:
        """(ready, {check: "ok" or what failed})."""
        with self._lock:
            if self._result is not None and time.monotonic() - self._result[0] < self.ttl:
                return self._result[1], self._result[2]
            checks = {"database": self._database(), "broker": self._broker(), "storage": self._storage()}
            ready = all(value == "ok" for value in checks.values())
            self._result = (time.monotonic(), ready, checks)
            return ready, checks

    def _database(self) -> str:
        from sqlalchemy import text

        from farm.db.migrate import at_head

        try:
            with self.database.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                if not self._migrated:
                    if not at_head(connection):
                        return "migrations are not at head: run `farm db upgrade`"
                    self._migrated = True
        except Exception as error:  # noqa: BLE001 - any failure means not ready, said in words
            return f"unreachable: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return "ok"

    def _broker(self) -> str:
        if self.sender is None or not hasattr(self.sender, "warm_up"):
            return "ok"  # nothing to dispatch through in this process
        try:
            self.sender.warm_up()
        except Exception as error:  # noqa: BLE001
            return f"unreachable: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        return "ok"

    def _storage(self) -> str:
        if self.storage is None:
            return "ok"
        try:
            self.storage.check_available(write=False)  # a HEAD per probe; the start checked writing
        except Exception as error:  # noqa: BLE001
            return str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        return "ok"
