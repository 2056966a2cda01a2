"""A coalesced group's meeting point: its prompts run side by side, each through the executor as it
would alone, and meet at their sampler node, where one of their threads samples every member as
one batch (farm.engine.sampling.group) and hands each its latent.

Invariants:
- Only the sampler's work is shared: each member keeps its own events, outputs, errors, history
  and interrupt, and every other node runs for it as for a prompt alone.
- The batch is sampled once every member still running has arrived at the sampler; a member that
  ended before (its own error, its interrupt) is not waited for.
- A waiting member honours its interrupt (it leaves the group; the others go on). While the batch
  samples, each step reports progress to every member and checks its interrupt: an interrupted
  member gets Interrupted (its rows are computed and dropped), the others finish; when every member
  is interrupted, sampling stops.
- If the group's sampling fails (out of memory, say), every member samples alone instead: one
  cause never fails several prompts, and a failure of a member's own recurs for it alone.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

_ALONE = object()  # a member's result that says: sample alone


class _EveryoneInterrupted(Exception):
    pass


@dataclasses.dataclass
class _Arrival:
    member: Any  # farm.engine.sampling.group.GroupMember
    model: Any
    settings: dict
    progress: Callable[[int, int], None]


class SamplingGroup:
    def __init__(self, prompt_ids, mode: str | None = None):
        self.prompt_ids = list(prompt_ids)
        self.mode = mode  # "exact" | "batched" | None (by device)
        self._waiting_for = set(self.prompt_ids)
        self._arrived: dict[str, _Arrival] = {}
        self._results: dict[str, Any] = {}
        self._sampling: set[str] = set()  # the members of the batch being sampled now
        self._condition = threading.Condition()
        self.batches: list[int] = []  # the size of every batch sampled (diagnostics, tests)

    def leave(self, prompt_id: str) -> None:
        """`prompt_id` ended (or left): the group waits for it no more."""
        with self._condition:
            self._waiting_for.discard(prompt_id)
            self._arrived.pop(prompt_id, None)
            self._condition.notify_all()

    def sample(self, prompt_id: str, member, model, settings: dict, progress: Callable[[int, int], None],
               check_interrupt: Callable[[], None], alone: Callable[[], dict]) -> dict:
        """`prompt_id`'s sampled LATENT, from the group's batch (or from `alone()`)."""
        with self._condition:
            self._arrived[prompt_id] = _Arrival(member, model, settings, progress)
            self._condition.notify_all()
            while True:
                if prompt_id in self._results:
                    result = self._results.pop(prompt_id)
                    break
                if not self._sampling and self._arrived and set(self._arrived) >= self._waiting_for:
                    batch = dict(self._arrived)
                    self._arrived.clear()
                    self._sampling = set(batch)
                    result = None
                    break
                self._condition.wait(0.1)
                if prompt_id not in self._sampling:
                    try:
                        check_interrupt()
                    except BaseException:
                        self._arrived.pop(prompt_id, None)
                        self._waiting_for.discard(prompt_id)
                        self._condition.notify_all()
                        raise
        if result is None:  # this thread samples the batch
            results = {}
            try:
                results = self._run(batch)
            finally:
                with self._condition:
                    self._results.update({pid: results.get(pid, _ALONE) for pid in batch})
                    self._sampling = set()
                    self._waiting_for -= set(batch)
                    self._condition.notify_all()
                    result = self._results.pop(prompt_id)
        if result is _ALONE:
            return alone()
        if isinstance(result, BaseException):
            raise result
        return result

    def _run(self, batch: dict[str, _Arrival]) -> dict[str, Any]:
        from farm.engine.sampling.group import sample_group

        ids = list(batch)
        first = batch[ids[0]]
        stopped: dict[str, BaseException] = {}

        def callback(step: int, total: int) -> None:
            for pid in ids:
                if pid in stopped:
                    continue
                try:
                    batch[pid].progress(step + 1, total)
                except Exception as exception:  # noqa: BLE001 - Interrupted, PromptTimeout: that member's
                    stopped[pid] = exception
            if len(stopped) == len(ids):
                raise _EveryoneInterrupted()

        self.batches.append(len(ids))
        try:
            latents = sample_group(first.model, [batch[pid].member for pid in ids], mode=self.mode,
                                   callback=callback, **first.settings)
        except _EveryoneInterrupted:
            return stopped
        except Exception:  # noqa: BLE001 - the group failed: each member samples alone instead
            log.exception("sampling %d coalesced prompts together failed; each samples alone", len(ids))
            return {pid: stopped.get(pid, _ALONE) for pid in ids}
        return {pid: stopped.get(pid, latent) for pid, latent in zip(ids, latents)}
