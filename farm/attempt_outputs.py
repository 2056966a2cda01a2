"""One set of outputs per prompt, however many attempts it took.

A worker killed after saving an image but before recording the prompt's end leaves that image
behind, and the next attempt saves its own. So every name an attempt is about to create is first
appended to that attempt's journal (`<prompt_id>.<attempt>`, kept by the storage all workers share:
a file in temp/.attempts on disk, objects under .attempts/ in a bucket). The next attempt, once it
has claimed the prompt, deletes what earlier attempts journaled; the attempt whose end is recorded
drops its journal and keeps its files; a reap that gives a prompt up deletes every attempt's files.
"""

from __future__ import annotations

import errno
import logging

from farm.storage.full import StorageFull, is_full

log = logging.getLogger(__name__)


class AttemptOutputs:
    """The storage one attempt's nodes write through: its team's storage, with every numbered
    output journaled (with the team) before it is created."""

    def __init__(self, storage, prompt_id: str, attempt: int, team: str | None = None):
        self._shared = storage
        self._team = team or ""
        self._storage = storage.for_team(team)
        self.journal = f"{prompt_id}.{attempt}"

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def write_numbered(self, kind, subfolder, basename, suffix, data, before_create=None) -> str:
        try:
            return self._storage.write_numbered(kind, subfolder, basename, suffix, data, before_create=self._journal)
        except Exception as error:
            if is_full(error):  # the journal's line or the file itself found no room
                raise StorageFull(errno.ENOSPC, f"the output storage is full: {error}") from error
            raise

    def _journal(self, kind: str, subfolder: str, filename: str) -> None:
        self._shared.journal_append(self.journal, f"{self._team}\t{kind}\t{subfolder}\t{filename}")

    def keep(self) -> None:
        """The attempt's end is recorded: its outputs are the prompt's."""
        self._shared.journal_drop(self.journal)

    def discard(self) -> None:
        """The attempt's end was refused (stale) or it was put back: its outputs go."""
        _discard(self._shared, self.journal)


def discard_attempts(storage, prompt_id: str, keep: int | None = None) -> int:
    """Delete the outputs journaled by `prompt_id`'s attempts other than `keep`; return how many."""
    removed = 0
    for journal in storage.journal_names(f"{prompt_id}."):
        if keep is None or journal != f"{prompt_id}.{keep}":
            removed += _discard(storage, journal)
    if removed:
        log.info("removed %d output(s) of other attempts of %s", removed, prompt_id)
    return removed


def _discard(storage, journal: str) -> int:
    removed = 0
    for line in storage.journal_lines(journal):
        try:
            fields = line.split("\t")
            team, kind, subfolder, filename = fields if len(fields) == 4 else ["", *fields]  # before teams: 3
            removed += storage.for_team(team).delete(kind, subfolder, filename)
        except ValueError:
            continue  # a torn last line, or a name the store refuses: nothing of ours
    storage.journal_drop(journal)
    return removed
