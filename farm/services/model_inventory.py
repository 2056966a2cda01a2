"""The model files the live workers can load, merged per folder type (the web's view of them).

Web hosts need not mount the models folder: what can be validated and listed is what the workers
report. With no live worker the web lists its own models folder. Listings are cached for `ttl`
seconds, so validating a burst of prompts costs one query; a file that is not in the cached
listing is looked for again before a prompt is refused (`appeared`), in fresh reports and in this
host's own folder, so a model copied in a moment ago is accepted at once by every web process.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from farm.db.models import Worker
from farm.models import LocalModelInventory
from farm.services.workers import is_live


class WorkerModelInventory:
    def __init__(self, database, settings, ttl: float = 2.0):
        self.database = database
        self.settings = settings
        self.ttl = ttl
        self.local = LocalModelInventory(settings.models_dir)
        self._cache: tuple[float, dict[str, list[str]] | None] | None = None
        self._lock = threading.Lock()

    def files(self, folder: str) -> list[str]:
        merged = self._merged()
        return self.local.files(folder) if merged is None else merged.get(folder, [])

    def appeared(self, folder: str, name: str) -> bool:
        with self._lock:
            self._cache = (time.monotonic(), self._load())
            merged = self._cache[1]
        return (merged is not None and name in merged.get(folder, ())) or self.local.appeared(folder, name)

    def _merged(self) -> dict[str, list[str]] | None:
        with self._lock:
            if self._cache is None or time.monotonic() - self._cache[0] > self.ttl:
                self._cache = (time.monotonic(), self._load())
            return self._cache[1]

    def _load(self) -> dict[str, list[str]] | None:
        with self.database.engine.connect() as connection:
            reports = connection.execute(
                select(Worker.__table__.c.model_files).where(is_live()),
                {"timeout": self.settings.worker_timeout_seconds},
            ).scalars().all()
        if not reports:
            return None
        merged: dict[str, set[str]] = {}
        for report in reports:
            for folder, files in (report or {}).items():
                merged.setdefault(folder, set()).update(files)
        return {folder: sorted(files) for folder, files in merged.items()}
