"""The model files under the models folder, listed per ComfyUI folder type (no torch needed).

A folder type's files are those under `<models_dir>/<folder>` whose real path stays inside that
folder's real path: the folder itself may be a symlink (to a bigger disk), but a symlink inside it
that points elsewhere is not listed, so the listing never reveals files outside the models store.
"""

from __future__ import annotations

import os
from pathlib import Path

from farm.config import MODEL_FOLDERS

MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
# ComfyUI's configs folder holds model config files rather than weights.
FOLDER_EXTENSIONS = {"configs": frozenset({".yaml"})}
SKIPPED_DIRECTORIES = {".git"}


def folder_types() -> list[str]:
    return list(MODEL_FOLDERS)


def is_folder_type(folder: str) -> bool:
    return folder in MODEL_FOLDERS


def model_files(models_dir: str | os.PathLike, folder: str) -> list[str]:
    """Sorted relative paths ("/"-separated) of the model files of folder type `folder`."""
    if not is_folder_type(folder):
        raise KeyError(folder)
    extensions = FOLDER_EXTENSIONS.get(folder, MODEL_EXTENSIONS)
    root = Path(models_dir) / folder
    if not root.is_dir():
        return []
    real_root = root.resolve()
    found = []
    # The real paths above each directory: meeting one again means a symlink loop.
    ancestors = {str(root): frozenset()}
    # followlinks: a symlinked subfolder that stays inside the store is listed like a real one.
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        real_directory = Path(directory).resolve()
        above = ancestors.pop(directory)
        if not _inside(real_directory, real_root) or real_directory in above:
            subdirectories[:] = []
            continue
        subdirectories[:] = [name for name in subdirectories if name not in SKIPPED_DIRECTORIES]
        for name in subdirectories:
            ancestors[os.path.join(directory, name)] = above | {real_directory}
        relative = Path(directory).relative_to(root)
        for name in files:
            if os.path.splitext(name)[1].lower() not in extensions:
                continue
            real_file = (Path(directory) / name).resolve()
            if real_file.is_file() and _inside(real_file, real_root):
                found.append((relative / name).as_posix())
    return sorted(found)


def is_model_file(models_dir: str | os.PathLike, folder: str, name: str) -> bool:
    """Whether relative path `name` is a model file of folder type `folder` that a listing would
    show (right extension, a file, inside the folder's real path)."""
    if not is_folder_type(folder) or os.path.splitext(name)[1].lower() not in FOLDER_EXTENSIONS.get(
            folder, MODEL_EXTENSIONS):
        return False
    if any(part in ("", ".", "..") for part in name.split("/")) or "\\" in name:
        return False  # only the spelling a listing shows: no "..", no absolute or empty parts
    root = Path(models_dir) / folder
    path = root / name
    try:
        real = path.resolve()
        return path.is_file() and _inside(real, root.resolve()) and real != root.resolve()
    except (OSError, ValueError):
        return False


def embedding_names(models_dir: str | os.PathLike) -> list[str]:
    """The embeddings' relative paths without their extension, as /embeddings lists them."""
    return strip_extensions(model_files(models_dir, "embeddings"))


def strip_extensions(paths: list[str]) -> list[str]:
    return [os.path.splitext(path)[0] for path in paths]


def inventory(models_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Every folder type that holds model files, with its files (what a worker reports)."""
    return {folder: files for folder in MODEL_FOLDERS if (files := model_files(models_dir, folder))}


class LocalModelInventory:
    """The model files of this host's models folder (workers, and a web with no live worker)."""

    def __init__(self, models_dir: str | os.PathLike | None):
        self.models_dir = models_dir

    def files(self, folder: str) -> list[str]:
        return model_files(self.models_dir, folder) if self.models_dir is not None else []

    def appeared(self, folder: str, name: str) -> bool:
        """Whether `name` is a model file of `folder` here now (checked alone, without a listing)."""
        return self.models_dir is not None and is_model_file(self.models_dir, folder, name)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
