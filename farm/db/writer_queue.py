"""The queue of SQLite writers on one host: threads on a Python lock, processes on an flock.

SQLite lets one transaction write at a time and keeps no queue of waiters: a process that finds
the write lock taken can only sleep and try again, so it starts late by up to its last sleep
(a submission waited 0.5 ms on average while a worker recorded its prompts). Every farm process
on the host (SQLite's file cannot be shared across hosts) first takes an exclusive flock of a
file beside the database; the kernel wakes the next waiter as soon as the holder lets go, and
BEGIN IMMEDIATE then finds the database free. Writers outside the farm (the sqlite3 shell, a
migration) do not take the flock; SQLite's busy handler still waits for them.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class WriterQueue:
    """A context manager held around each write transaction on the SQLite file at `path`
    (None: an in-memory database, threads only)."""

    def __init__(self, path: str | os.PathLike | None):
        self._threads = threading.Lock()
        self._path = None if path is None else Path(f"{path}-writers")
        self._descriptor: int | None = None
        self._pid: int | None = None

    def _file(self) -> int:
        # An flock belongs to the open file, which a forked child shares with its parent: each
        # process opens its own, or parent and child would hold "the" lock together.
        if self._pid != os.getpid():
            self._descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._descriptor

    def __enter__(self) -> "WriterQueue":
        self._threads.acquire()
        if self._path is not None:
            try:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
            except BaseException:
                self._threads.release()
                raise
        return self

    def __exit__(self, *_exception) -> None:
        try:
            if self._path is not None:
                fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        if self._descriptor is not None and self._pid == os.getpid():
            os.close(self._descriptor)
        self._descriptor = self._pid = None
