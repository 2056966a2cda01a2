"""Which queued prompt an idle worker takes: eligibility by model files, retries elsewhere, and
checkpoint affinity within a bound. Pure functions over rows the dispatcher read; no SQL here.

Affinity: loading a checkpoint costs seconds to tens of seconds, so an idle worker may take, among
the first `lookahead` prompts it can run, the first one whose checkpoints it has loaded (a prompt
loading none counts as loaded). It never passes a `front` prompt, and a prompt it passes is
marked; once a marked prompt has waited `max_wait` since it was first passed, the next worker takes
it before any affinity choice. With nothing loaded, or lookahead 0, the order is the queue's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

CHECKPOINT_FOLDERS = ("checkpoints", "diffusion_models", "unet")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A queued prompt as the dispatcher sees it, in queue order."""

    prompt_id: str
    attempt: int
    front: bool
    needs: frozenset[str]  # "folder/relative path" of each model file it loads
    lost_on: tuple[str, ...] = ()  # workers that lost it before
    overdue: bool = False  # affinity passed it over `max_wait` ago


@dataclasses.dataclass(frozen=True)
class Choice:
    index: int  # the candidate to take
    passed: tuple[int, ...] = ()  # candidates before it that affinity passed over


def files_of(model_files: dict | None) -> frozenset[str]:
    """A worker's report {folder: [paths]} as "folder/path" strings."""
    return frozenset(f"{folder}/{path}" for folder, paths in (model_files or {}).items() for path in paths)


# A worker's tags count as files of a folder no model lives in: a batch that requires tags needs
# them as it needs its model files, so eligibility, its SQL filter and the waiting reasons are one
# mechanism for both.
TAGS_FOLDER = "tags"


def tag_needs(tags) -> list[str]:
    return [f"{TAGS_FOLDER}/{tag}" for tag in tags or ()]


def capabilities(model_files: dict | None, tags=()) -> frozenset[str]:
    """What a worker offers: its model files and its tags, as needs name them."""
    return files_of(model_files) | frozenset(tag_needs(tags))


def describe_need(need: str) -> str:
    folder, _, name = need.partition("/")
    return f"the tag {name!r}" if folder == TAGS_FOLDER else need


def loaded_checkpoints(loaded_models: Iterable[dict] | None) -> frozenset[str]:
    """The checkpoint files among a worker's reported loaded models."""
    return frozenset(entry["file"] for entry in loaded_models or () if entry.get("file")
                     and entry["file"].split("/", 1)[0] in CHECKPOINT_FOLDERS)


def checkpoints(needs: frozenset[str]) -> frozenset[str]:
    return frozenset(path for path in needs if path.split("/", 1)[0] in CHECKPOINT_FOLDERS)


def choose(candidates: list[Candidate], worker: str, loaded: frozenset[str], lookahead: int,
           runs_elsewhere: Callable[[Candidate], bool]) -> Choice | None:
    """The candidate `worker` should take, or None when it should take none of them.

    A candidate this worker lost before is left to another worker that can run it, if any.
    """
    usable = [i for i, candidate in enumerate(candidates)
              if not (worker in candidate.lost_on and runs_elsewhere(candidate))]
    if not usable:
        return None
    first = usable[0]
    if candidates[first].front or not loaded or lookahead <= 0:
        return Choice(first)
    chosen = first
    for i in usable[:lookahead]:
        candidate = candidates[i]
        if candidate.front and i != first:
            break  # never pass a front prompt
        if checkpoints(candidate.needs) <= loaded:
            chosen = i
            break
    passed = tuple(i for i in usable if i < chosen)
    for i in passed:
        if candidates[i].overdue:
            return Choice(i)
    return Choice(chosen, passed)


def missing_files(needs: frozenset[str], workers_files: list[frozenset[str]]) -> list[str]:
    """The files of `needs` that the best-equipped worker lacks (empty when some worker has all)."""
    if not needs:
        return []
    best = min((needs - files for files in workers_files), key=len, default=needs)
    return sorted(best)
