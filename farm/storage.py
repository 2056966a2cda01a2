"""Where inputs, outputs and temp files live, addressed as (type, subfolder, filename) like ComfyUI.

Every path handed out is resolved with symlinks followed and must stay inside its folder, so no
request (`..`, absolute paths, symlinks planted in a folder) reaches anything outside the store.
`LocalStorage` is a folder per type; an S3 backend will implement the same methods.
"""

from __future__ import annotations

import mimetypes
import os
import re
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

KINDS = ("output", "input", "temp")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class PathRejected(ValueError):
    """A (type, subfolder, filename) that would leave the store or is malformed."""


class Storage(Protocol):
    def resolve(self, kind: str, subfolder: str, filename: str) -> Path: ...
    def open(self, kind: str, subfolder: str, filename: str) -> BinaryIO: ...
    def exists(self, kind: str, subfolder: str, filename: str) -> bool: ...
    def write_numbered(self, kind: str, subfolder: str, basename: str, suffix: str, data: bytes) -> str: ...
    def list_images(self, kind: str) -> list[str]: ...


def split_prefix(prefix: str) -> tuple[str, str]:
    """SaveImage's filename_prefix: "portraits/run1/img" -> ("portraits/run1", "img")."""
    normalized = os.path.normpath(prefix.replace("\\", "/"))
    subfolder, basename = os.path.split(normalized)
    if os.path.isabs(normalized) or normalized == ".." or normalized.startswith("../"):
        raise PathRejected("Saving image outside the output folder is not allowed.")
    return subfolder, basename


class LocalStorage:
    """One local folder per type (output, input, temp)."""

    def __init__(self, roots: dict[str, Path]):
        self.roots = {kind: Path(path) for kind, path in roots.items()}
        self._next_counters: dict[tuple[Path, str], int] = {}
        self._counter_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "LocalStorage":
        return cls({"output": settings.output_dir, "input": settings.input_dir, "temp": settings.temp_dir})

    def root(self, kind: str) -> Path:
        if kind not in self.roots:
            raise PathRejected(f"unknown file type {kind!r}")
        root = self.roots[kind]
        root.mkdir(parents=True, exist_ok=True)
        return root.resolve()

    def folder(self, kind: str, subfolder: str) -> Path:
        """The folder for (kind, subfolder), which must resolve inside the kind's root."""
        root = self.root(kind)
        subfolder = subfolder or ""
        if os.path.isabs(subfolder) or "\x00" in subfolder:
            raise PathRejected(f"subfolder {subfolder!r} is not a relative path")
        folder = (root / subfolder).resolve()
        if folder != root and root not in folder.parents:
            raise PathRejected(f"subfolder {subfolder!r} leaves the {kind} folder")
        return folder

    def resolve(self, kind: str, subfolder: str, filename: str) -> Path:
        if not filename or filename in (".", "..") or "/" in filename or "\\" in filename or "\x00" in filename:
            raise PathRejected(f"invalid filename {filename!r}")
        folder = self.folder(kind, subfolder)
        path = (folder / filename).resolve()
        root = self.root(kind)
        if root not in path.parents:
            raise PathRejected(f"{filename!r} leaves the {kind} folder")
        return path

    def exists(self, kind: str, subfolder: str, filename: str) -> bool:
        return self.resolve(kind, subfolder, filename).is_file()

    def open(self, kind: str, subfolder: str, filename: str) -> BinaryIO:
        return open(self.resolve(kind, subfolder, filename), "rb")

    def write_numbered(self, kind: str, subfolder: str, basename: str, suffix: str, data: bytes) -> str:
        """Write `data` as `<basename>_<NNNNN>_<suffix>` with the next free counter; return the name.

        The counter continues after the highest existing one (ComfyUI's rule). The folder is
        scanned once per (folder, basename) and the next counter remembered, so saving stays
        cheap in a folder of thousands of images; the file is created exclusively, so workers
        sharing the folder never overwrite each other, and a stale memory only costs a rescan.
        """
        folder = self.folder(kind, subfolder)
        folder.mkdir(parents=True, exist_ok=True)
        key = (folder, basename)
        with self._counter_lock:
            counter = self._next_counters.get(key) or self._scan_counter(folder, basename)
            collisions = 0
            while True:
                filename = f"{basename}_{counter:05}_{suffix}"
                try:
                    with open(folder / filename, "xb") as handle:
                        handle.write(data)
                    self._next_counters[key] = counter + 1
                    return filename
                except FileExistsError:
                    collisions += 1
                    counter = counter + 1 if collisions < 8 else self._scan_counter(folder, basename)
                    collisions = collisions if collisions < 8 else 0

    @staticmethod
    def _scan_counter(folder: Path, basename: str) -> int:
        pattern = re.compile(re.escape(basename) + r"_(\d+)_")
        highest = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                match = pattern.match(entry.name)
                if match:
                    highest = max(highest, int(match.group(1)))
        return highest + 1

    def list_images(self, kind: str) -> list[str]:
        root = self.root(kind)
        return sorted(
            entry.name for entry in os.scandir(root)
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        )


def content_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"
