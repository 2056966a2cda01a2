"""Inputs, outputs and temp files in local folders (one per type), shared by the hosts that mount them.

Every path handed out is resolved with symlinks followed and must stay inside its folder, so no
request (`..`, absolute paths, symlinks planted in a folder) reaches anything outside the store.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

from farm.storage.numbering import NumberedNames
from farm.storage.paths import (
    DEFAULT_TEAM, PathRejected, StoredFile, check_filename, check_kind, check_team, is_image_name, numbered_pattern,
)

JOURNALS = ".attempts"  # attempt journals, in the temp folder


class LocalStorage:
    """One local folder per type (output, input, temp)."""

    def __init__(self, roots: dict[str, Path], teams_root: Path | None = None):
        self.roots = {kind: Path(path) for kind, path in roots.items()}
        # Other teams' files live in folders of their own, beside (never inside) these roots:
        # `<teams_root>/<team>/<type>`. A team sees its own folders only, by construction.
        self.teams_root = Path(teams_root) if teams_root is not None else None
        self._names = NumberedNames()
        self._teams: dict[str, LocalStorage] = {}

    @classmethod
    def from_settings(cls, settings) -> "LocalStorage":
        return cls({"output": settings.output_dir, "input": settings.input_dir, "temp": settings.temp_dir},
                   teams_root=settings.data_dir / "teams")

    def describe(self) -> str:
        return f"local folders ({self.roots['output']}, ...)"

    def check_available(self, write: bool = True) -> None:
        """Local folders are created on demand: there is nothing to check before the first file."""

    def for_team(self, team: str | None) -> "LocalStorage":
        """The storage `team` reads and writes: these roots for the default team, its own folders
        for any other."""
        if not team or team == DEFAULT_TEAM or self.teams_root is None:
            return self
        found = self._teams.get(team)
        if found is None:
            found = LocalStorage({kind: self.teams_root / check_team(team) / kind for kind in self.roots})
            self._teams = {**self._teams, team: found}  # replaced, not changed: read without a lock
        return found

    def root(self, kind: str) -> Path:
        root = self.roots[check_kind(kind)]
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

    def check_folder(self, kind: str, subfolder: str) -> None:
        """Raise PathRejected unless (kind, subfolder) names a folder inside the store."""
        self.folder(kind, subfolder)

    def resolve(self, kind: str, subfolder: str, filename: str) -> Path:
        check_filename(filename)
        folder = self.folder(kind, subfolder)
        path = (folder / filename).resolve()
        root = self.root(kind)
        if root not in path.parents:
            raise PathRejected(f"{filename!r} leaves the {kind} folder")
        return path

    def local_path(self, kind: str, subfolder: str, filename: str) -> Path:
        """The file's path, for readers that do better with one (sendfile, zip)."""
        return self.resolve(kind, subfolder, filename)

    def exists(self, kind: str, subfolder: str, filename: str) -> bool:
        return self.resolve(kind, subfolder, filename).is_file()

    def stat(self, kind: str, subfolder: str, filename: str) -> StoredFile:
        """Size, validator and time of the file; FileNotFoundError when there is none."""
        path = self.resolve(kind, subfolder, filename)
        if not path.is_file():
            raise FileNotFoundError(f"{kind}/{subfolder}/{filename}")
        info = path.stat()
        return StoredFile(info.st_size, f"{info.st_mtime_ns:x}-{info.st_size:x}",
                          datetime.datetime.fromtimestamp(info.st_mtime, datetime.timezone.utc))

    def open(self, kind: str, subfolder: str, filename: str) -> BinaryIO:
        """The file for reading (seekable); FileNotFoundError when there is none."""
        path = self.resolve(kind, subfolder, filename)
        if path.is_dir():
            raise FileNotFoundError(f"{kind}/{subfolder}/{filename} is a folder")
        return open(path, "rb")

    def delete(self, kind: str, subfolder: str, filename: str) -> bool:
        try:
            self.resolve(kind, subfolder, filename).unlink()
            return True
        except FileNotFoundError:
            return False

    def presigned_url(self, kind: str, subfolder: str, filename: str, **_headers) -> None:
        return None  # files on disk are served by the web process itself

    def write_numbered(self, kind: str, subfolder: str, basename: str, suffix: str, data: bytes,
                       before_create=None) -> str:
        """Write `data` as `<basename>_<NNNNN>_<suffix>` with the next free counter
        (farm.storage.numbering); return the name. `before_create(kind, subfolder, filename)` is
        told each name before the file is created."""
        folder = self.folder(kind, subfolder)
        folder.mkdir(parents=True, exist_ok=True)

        def create(filename: str) -> bool:
            created = False
            try:
                with open(folder / filename, "xb") as handle:
                    created = True
                    handle.write(data)
                return True
            except FileExistsError:
                return False
            except OSError:
                # Out of space, say, on write or on the close that flushes: no truncated image is
                # left behind (only a file this call created is removed).
                if created:
                    (folder / filename).unlink(missing_ok=True)
                raise

        return self._names.create(folder, basename, suffix, create, lambda: self._scan_counter(folder, basename),
                                   None if before_create is None else lambda name: before_create(kind, subfolder, name))

    @staticmethod
    def _scan_counter(folder: Path, basename: str) -> int:
        pattern = numbered_pattern(basename)
        highest = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                match = pattern.match(entry.name)
                if match:
                    highest = max(highest, int(match.group(1)))
        return highest + 1

    def save_upload(self, kind: str, subfolder: str, filename: str, stream: BinaryIO, overwrite: bool) -> str:
        """Store an upload under `filename` in (kind, subfolder) with ComfyUI's naming rule; return the name.

        With `overwrite` the file is replaced. Otherwise, while the name is taken, a file with the
        same sha256 is reused as it is and anything else moves the upload on to "name (1).ext",
        "name (2).ext", ... The bytes go to a hidden temporary file first and are linked in
        exclusively, so a reader never sees half a file and two uploads never replace each other.
        """
        self.resolve(kind, subfolder, filename)  # reject a bad name before creating any folder
        folder = self.folder(kind, subfolder)
        folder.mkdir(parents=True, exist_ok=True)
        # Not tempfile: its files are private (0600), and workers may read uploads as another user.
        temporary = folder / f".upload-{secrets.token_hex(8)}.tmp"
        try:
            with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
                digest = _copy_hashing(stream, handle)
            stem, extension = os.path.splitext(filename)
            candidate, number = filename, 0
            while True:
                target = self.resolve(kind, subfolder, candidate)
                if overwrite:
                    if target.is_dir():
                        raise PathRejected(f"{candidate!r} is a folder")
                    os.replace(temporary, target)
                    return candidate
                if not os.path.lexists(target):
                    try:
                        _link_exclusively(temporary, target)
                        return candidate
                    except FileExistsError:
                        continue  # another upload took the name meanwhile: look at it again
                if target.is_file() and _same_content(target, digest, temporary.stat().st_size):
                    return candidate
                number += 1
                candidate = f"{stem} ({number}){extension}"
        finally:
            temporary.unlink(missing_ok=True)

    def list_images(self, kind: str) -> list[str]:
        """The image files at the top of the type's folder, sorted (LoadImage's choices)."""
        root = self.root(kind)
        return sorted(entry.name for entry in os.scandir(root) if entry.is_file() and is_image_name(entry.name))

    # Attempt journals (farm.attempt_outputs): small append-only files in temp/.attempts, shared
    # by every worker that mounts the folders.

    def _journals(self) -> Path:
        folder = self.root("temp") / JOURNALS
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def journal_append(self, name: str, line: str) -> None:
        descriptor = os.open(self._journals() / check_filename(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, (line + "\n").encode())
        finally:
            os.close(descriptor)

    def journal_names(self, prefix: str) -> list[str]:
        with os.scandir(self._journals()) as entries:
            return [entry.name for entry in entries if entry.name.startswith(prefix)]

    def journal_lines(self, name: str) -> list[str]:
        try:
            return (self._journals() / check_filename(name)).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def journal_drop(self, name: str) -> None:
        (self._journals() / check_filename(name)).unlink(missing_ok=True)


def _copy_hashing(source: BinaryIO, target: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(1 << 20):
        digest.update(chunk)
        target.write(chunk)
    return digest.hexdigest()


def _same_content(path: Path, digest: str, size: int) -> bool:
    if path.stat().st_size != size:
        return False
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest() == digest


def _link_exclusively(source: Path, target: Path) -> None:
    """Give `source`'s content the name `target`, failing with FileExistsError if it is taken."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links: an exclusive create still never replaces a file.
        with open(source, "rb") as reader, open(target, "xb") as writer:
            shutil.copyfileobj(reader, writer)
