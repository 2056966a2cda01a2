"""A coalesced group's meeting points: its prompts run side by side, each through the executor as it
would alone, and meet at the nodes whose work is shared (the sampler; on GPUs the VAE decode),
where one member's thread does the work for all in one batch and hands each its part.

Invariants:
- Only a meeting node's work is shared: each member keeps its own events, outputs, errors,
  history and interrupt, and every other node runs for it as for a prompt alone.
- A meeting's batch is done once every member still running has arrived there; a member that
  ended before (its own error, its interrupt) is not waited for, nor one waiting at another
  meeting (it came past this one without meeting: its node's result was cached), so members
  never wait for each other in a circle.
- A waiting member honours its interrupt (it leaves the group; the others go on). While a batch
  runs, its work reports progress to each member, which may stop it (see the sampler's work).
- When a batch's work fails, every member of it does the work alone instead (`alone()`): one
  cause never fails several prompts, and a failure of a member's own recurs for it alone.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

ALONE = object()  # a member's result that says: do the work alone


@dataclasses.dataclass
class _Meeting:
    arrived: dict[str, Any] = dataclasses.field(default_factory=dict)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    working: set[str] = dataclasses.field(default_factory=set)  # the members of the batch at work
    served: set[str] = dataclasses.field(default_factory=set)


class CoalescedGroup:
    def __init__(self, prompt_ids, mode: str | None = None):
        self.prompt_ids = list(prompt_ids)
        self.mode = mode  # "exact" | "batched" | None (by device)
        self._running = set(self.prompt_ids)
        self._meetings: dict[str, _Meeting] = {}
        self._waiting_at: dict[str, str] = {}  # member -> the meeting point it waits at
        self._condition = threading.Condition()
        self.batches: dict[str, list[int]] = {}  # each meeting point's batch sizes (diagnostics, tests)

    def leave(self, prompt_id: str) -> None:
        """`prompt_id` ended (or left): no meeting waits for it any more."""
        with self._condition:
            self._running.discard(prompt_id)
            self._waiting_at.pop(prompt_id, None)
            for meeting in self._meetings.values():
                meeting.arrived.pop(prompt_id, None)
            self._condition.notify_all()

    def meet(self, point: str, prompt_id: str, payload, work: Callable[[dict], dict],
             check_interrupt: Callable[[], None], alone: Callable[[], Any]):
        """`prompt_id`'s result at meeting `point`: from `work({prompt_id: payload, ...})` done once
        for every member there (by whichever thread completes the batch), or from `alone()`."""
        with self._condition:
            meeting = self._meetings.setdefault(point, _Meeting())
            meeting.arrived[prompt_id] = payload
            self._waiting_at[prompt_id] = point
            self._condition.notify_all()
            while True:
                if prompt_id in meeting.results:
                    result = meeting.results.pop(prompt_id)
                    break
                # waiting at another point, not yet in its batch: it will not come here first
                elsewhere = {member for member, at in self._waiting_at.items()
                             if at != point and member not in self._meetings[at].working}
                expected = self._running - meeting.served - elsewhere
                if not meeting.working and meeting.arrived and set(meeting.arrived) >= expected:
                    batch = dict(meeting.arrived)
                    meeting.arrived.clear()
                    meeting.working = set(batch)
                    result = None
                    break
                self._condition.wait(0.1)
                if prompt_id not in meeting.working:
                    try:
                        check_interrupt()
                    except BaseException:
                        meeting.arrived.pop(prompt_id, None)
                        self._waiting_at.pop(prompt_id, None)
                        self._running.discard(prompt_id)
                        self._condition.notify_all()
                        raise
            self._waiting_at.pop(prompt_id, None)
        if result is None:  # this thread works for the batch
            results = {}
            self.batches.setdefault(point, []).append(len(batch))
            try:
                results = work(batch)
            except Exception:  # noqa: BLE001 - the batch failed: each member works alone instead
                log.exception("%s for %d coalesced prompts together failed; each does it alone", point, len(batch))
            finally:
                with self._condition:
                    meeting.results.update({pid: results.get(pid, ALONE) for pid in batch})
                    for pid in batch:  # served: on their way to the next point (expected there)
                        self._waiting_at.pop(pid, None)
                    meeting.working = set()
                    meeting.served |= set(batch)
                    self._condition.notify_all()
                    result = meeting.results.pop(prompt_id)
        if result is ALONE:
            return alone()
        if isinstance(result, BaseException):
            raise result
        return result
