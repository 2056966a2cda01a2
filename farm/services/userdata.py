"""ComfyUI's user folder (`/userdata`, `/settings`): the editor's settings, saved workflows and
subgraphs, one folder per team, kept in the database so every web host of a cluster sees the same.

Paths are relative, '/'-separated and checked as strictly as ComfyUI checks its user root (no
absolute paths, no `..`, no NUL); folders exist implicitly, as the prefixes of the files' paths.
The settings are the JSON file `comfy.settings.json` of that folder, changed under a row lock so
two editors saving settings at once both keep their change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import posixpath

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from farm.db.models import UserFile

SETTINGS_FILE = "comfy.settings.json"
MAX_PATH = 1024


class UserDataError(Exception):
    """A request the user folder refuses: an HTTP status and ComfyUI's message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    modified: float  # seconds since the epoch, as ComfyUI's getmtime
    created: float

    def as_json(self) -> dict:
        return {"path": self.path, "size": self.size, "modified": self.modified, "created": self.created}


def clean_path(path: str, *, folder: bool = False) -> str:
    """`path` normalized ("a//b/./c" -> "a/b/c"), or UserDataError when it leaves the user folder."""
    if path is None or "\x00" in path or len(path) > MAX_PATH:
        raise UserDataError(400, "Invalid path")
    path = path.replace("\\", "/")
    if path.startswith("/"):
        raise UserDataError(403, "Invalid path")
    normalized = posixpath.normpath(path) if path else "."
    if normalized == ".." or normalized.startswith("../"):
        raise UserDataError(403, "Invalid path")
    if normalized == ".":
        if folder:
            return ""
        raise UserDataError(400, "Invalid path")
    return normalized


def _info(row) -> FileInfo:
    return FileInfo(row.path, row.size, row.modified_at.timestamp(), row.created_at.timestamp())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def read(database, team: str, path: str) -> bytes | None:
    path = clean_path(path)
    with database.reading() as session:
        return session.scalar(select(UserFile.content).where(UserFile.team == team, UserFile.path == path))


def write(database, team: str, path: str, content: bytes, overwrite: bool = True) -> FileInfo:
    """Store `content` at `path`; 409 when it exists and `overwrite` is off."""
    path = clean_path(path)
    for _ in range(3):  # two first writes of one path race to insert: the loser updates
        try:
            with database.write() as session:
                row = session.get(UserFile, (team, path), with_for_update=True)
                if row is not None and not overwrite:
                    raise UserDataError(409, "File already exists")
                if _is_folder(session, team, path):
                    raise UserDataError(400, "A folder has this name")
                now = _now()
                if row is None:
                    row = UserFile(team=team, path=path, content=content, size=len(content), created_at=now,
                                   modified_at=now)
                    session.add(row)
                else:
                    row.content, row.size, row.modified_at = content, len(content), now
                session.flush()
                return _info(row)
        except IntegrityError:
            continue
    raise UserDataError(409, "File already exists")


def _is_folder(session, team: str, path: str) -> bool:
    return session.scalar(select(UserFile.path).where(
        UserFile.team == team, UserFile.path.startswith(path + "/", autoescape=True)).limit(1)) is not None


def remove(database, team: str, path: str) -> bool:
    path = clean_path(path)
    with database.write() as session:
        return session.execute(delete(UserFile).where(UserFile.team == team, UserFile.path == path)).rowcount > 0


def move(database, team: str, source: str, target: str, overwrite: bool = False) -> FileInfo:
    """Rename `source` to `target`: 404 when the source is missing, 409 when the target exists and
    `overwrite` is off."""
    source, target = clean_path(source), clean_path(target)
    with database.write() as session:
        row = session.get(UserFile, (team, source), with_for_update=True)
        if row is None:
            raise UserDataError(404, "File not found")
        if source == target:
            return _info(row)
        existing = session.get(UserFile, (team, target), with_for_update=True)
        if existing is not None:
            if not overwrite:
                raise UserDataError(409, "File already exists")
            session.delete(existing)
            session.flush()
        moved = UserFile(team=team, path=target, content=row.content, size=row.size, created_at=row.created_at,
                         modified_at=_now())
        session.delete(row)
        session.flush()
        session.add(moved)
        session.flush()
        return _info(moved)


def _under(session, team: str, folder: str):
    """Rows whose path is inside `folder` ("" for the whole user folder), by path."""
    query = select(UserFile.path, UserFile.size, UserFile.modified_at, UserFile.created_at).where(UserFile.team == team)
    if folder:
        query = query.where(UserFile.path.startswith(folder + "/", autoescape=True))
    return session.execute(query.order_by(UserFile.path)).all()


def listing(database, team: str, folder: str, recurse: bool) -> list[FileInfo]:
    """The files inside `folder` (paths relative to it), all of them with `recurse`, else its own.

    ComfyUI answers 404 for a folder that does not exist; here folders are only the prefixes of
    files, so a folder with no files is an empty list (which the editor treats alike)."""
    folder = clean_path(folder, folder=True)
    start = len(folder) + 1 if folder else 0
    with database.reading() as session:
        rows = _under(session, team, folder)
    found = []
    for row in rows:
        relative = row.path[start:]
        if recurse or "/" not in relative:
            found.append(FileInfo(relative, row.size, row.modified_at.timestamp(), row.created_at.timestamp()))
    return found


def listing_v2(database, team: str, folder: str) -> list[dict]:
    """`/v2/userdata`: the folders and files directly in `folder`, folders first, then by name
    case-insensitively; each with its path from the user folder's root."""
    folder = clean_path(folder, folder=True)
    start = len(folder) + 1 if folder else 0
    with database.reading() as session:
        rows = _under(session, team, folder)
        if folder and not rows:
            if session.get(UserFile, (team, folder)) is not None:
                raise UserDataError(400, "Path is not a directory")
            raise UserDataError(404, "Directory not found")
    folders, files = {}, []
    for row in rows:
        relative = row.path[start:]
        if "/" in relative:
            name = relative.split("/", 1)[0]
            folders[name] = {"name": name, "path": f"{folder}/{name}" if folder else name, "type": "directory"}
        else:
            files.append({"name": relative, "path": row.path, "type": "file", "size": row.size,
                          "modified": row.modified_at.timestamp()})
    by_name = lambda entry: entry["name"].lower()  # noqa: E731
    return sorted(folders.values(), key=by_name) + sorted(files, key=by_name)


def settings(database, team: str) -> dict:
    """The team's editor settings ({} when none are stored or the file is not a JSON object)."""
    content = read(database, team, SETTINGS_FILE)
    try:
        found = json.loads(content) if content else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def change_settings(database, team: str, changes: dict) -> None:
    """Shallow-merge `changes` into the team's settings, atomically."""
    for _ in range(3):
        try:
            with database.write() as session:
                row = session.get(UserFile, (team, SETTINGS_FILE), with_for_update=True)
                try:
                    current = json.loads(row.content) if row is not None else {}
                except ValueError:
                    current = {}
                current = {**(current if isinstance(current, dict) else {}), **changes}
                content, now = json.dumps(current, indent=4).encode(), _now()
                if row is None:
                    session.add(UserFile(team=team, path=SETTINGS_FILE, content=content, size=len(content),
                                         created_at=now, modified_at=now))
                else:
                    row.content, row.size, row.modified_at = content, len(content), now
            return
        except IntegrityError:
            continue  # the team's first settings were written meanwhile: merge into those
    raise UserDataError(409, "The settings changed meanwhile; retry")
