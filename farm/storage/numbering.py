"""Numbered output names (`<basename>_<NNNNN>_<suffix>`, ComfyUI's rule), for every storage backend.

The counter continues after the highest existing one. It is found once per (folder, basename) by
the backend's scan and then remembered, so saving stays cheap in a folder of thousands of images;
each name is created exclusively by the backend, so writers sharing the folder never overwrite
each other, and a stale memory only costs a rescan.
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable

RESCAN_AFTER = 8  # names found taken in a row before the folder is scanned again


class NumberedNames:
    def __init__(self):
        self._next: dict[tuple[Hashable, str], int] = {}
        self._lock = threading.Lock()

    def create(self, folder: Hashable, basename: str, suffix: str, create: Callable[[str], bool],
               scan: Callable[[], int], before_create: Callable[[str], None] | None = None) -> str:
        """Create the next free name in `folder` and return it. `create(filename)` makes it
        exclusively (False: the name is taken), `scan()` gives the highest existing counter plus
        one, and `before_create(filename)` is told each name first (it may refuse it by raising)."""
        key = (folder, basename)
        with self._lock:
            counter = self._next.get(key) or scan()
            collisions = 0
            while True:
                filename = f"{basename}_{counter:05}_{suffix}"
                if before_create is not None:
                    before_create(filename)
                if create(filename):
                    self._next[key] = counter + 1
                    return filename
                collisions += 1
                if collisions < RESCAN_AFTER:
                    counter += 1
                else:
                    counter, collisions = scan(), 0
