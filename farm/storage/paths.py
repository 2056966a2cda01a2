"""The rules every storage backend applies to (type, subfolder, filename) before touching a file."""

from __future__ import annotations

import dataclasses
import datetime
import mimetypes
import os
import posixpath
import re

KINDS = ("output", "input", "temp")
DEFAULT_TEAM = "default"
TEAM_FOLDER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class PathRejected(ValueError):
    """A (type, subfolder, filename) that would leave the store or is malformed."""

    __module__ = "farm.storage"  # its public name: node errors report it as exception_type


class StorageUnavailable(RuntimeError):
    """The store cannot be reached or refuses the farm (a missing bucket, denied access)."""

    __module__ = "farm.storage"


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """What /view needs to know about a stored file before reading it."""

    size: int
    etag: str
    modified: datetime.datetime


def split_prefix(prefix: str) -> tuple[str, str]:
    """SaveImage's filename_prefix: "portraits/run1/img" -> ("portraits/run1", "img")."""
    normalized = os.path.normpath(prefix.replace("\\", "/"))
    subfolder, basename = os.path.split(normalized)
    if os.path.isabs(normalized) or normalized == ".." or normalized.startswith("../"):
        raise PathRejected("Saving image outside the output folder is not allowed.")
    return subfolder, basename


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise PathRejected(f"unknown file type {kind!r}")
    return kind


def check_filename(filename: str) -> str:
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename or "\x00" in filename:
        raise PathRejected(f"invalid filename {filename!r}")
    return filename


def check_team(team: str) -> str:
    if not TEAM_FOLDER.match(team):
        raise PathRejected(f"invalid team name {team!r}")
    return team


def clean_subfolder(kind: str, subfolder: str) -> str:
    """`subfolder` as a normalized relative path ("" for the type's root) that stays inside it.

    For stores without real folders (S3 keys): the same answers a folder on disk gives, minus
    symlinks, which such stores do not have.
    """
    subfolder = subfolder or ""
    if subfolder.startswith("/") or os.path.isabs(subfolder) or "\x00" in subfolder:
        raise PathRejected(f"subfolder {subfolder!r} is not a relative path")
    normalized = posixpath.normpath(subfolder) if subfolder else "."
    if normalized == ".." or normalized.startswith("../"):
        raise PathRejected(f"subfolder {subfolder!r} leaves the {kind} folder")
    return "" if normalized == "." else normalized


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def numbered_pattern(basename: str) -> re.Pattern:
    """Matches SaveImage's `<basename>_<NNNNN>_...` names, the counter as group 1."""
    return re.compile(re.escape(basename) + r"_(\d+)_")


def content_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"
