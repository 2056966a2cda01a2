"""Taking prompts back from lost workers, and telling their clients when a prompt cannot go on.

A worker whose beat is older than `worker_timeout_seconds` (by the database's clock) is dead. A
reap locks the dead workers' rows with the age condition in the locking statement (PostgreSQL
re-checks it against a beat committed meanwhile, and a later beat waits for the reap and then
finds the row reaped), so a worker that beat in time is never reaped; SQLite runs the whole reap
as its only writer. Their dispatched or running prompts go back to `queued` at their place in the
order (the next dispatch raises the attempt, so a late message or result of the old attempt is
refused) and remember the lost worker, so the retry goes elsewhere when it can; a prompt that
used `max_attempts` attempts ends in `error` (WorkerLost). A worker that lost
`lock_after_failures` prompts in a row is locked, with the reason, until an operator unlocks it.

Any process may reap (workers and web processes alike), concurrently: with no live worker left,
the web still ends the lost prompts. A process reaps only after the database has answered it for
a whole worker timeout, so the end of a database outage, which left every beat old, is not
mistaken for the death of every worker.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from sqlalchemy import select

from farm.db import prompt_counts
from farm.db.clock import ago, db_now
from farm.db.models import Prompt, PromptState, Worker
from farm.graph.executor import now_ms
from farm.services import cell_retries, webhooks
from farm.services.retention import RetentionClock

log = logging.getLogger(__name__)

_ACTIVE = [s.value for s in PromptState.active()]


@dataclasses.dataclass(frozen=True)
class LostPrompt:
    """A prompt that ended in error because the workers running it kept getting lost."""

    prompt_id: str
    client_id: str | None
    error: dict  # the execution_error of its history entry
    team: str | None = None


@dataclasses.dataclass
class Reaped:
    """What a reap did: prompts taken back, those of them that failed, the dead workers."""

    taken: int = 0
    failed: list[LostPrompt] = dataclasses.field(default_factory=list)
    dead: list[str] = dataclasses.field(default_factory=list)


def worker_lost_error(prompt_id: str, message: str, exception_type: str = "WorkerLost") -> dict:
    """The execution_error of a prompt that ended outside any node (ComfyUI's payload shape)."""
    return {
        "prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
        "exception_message": message + "\n", "exception_type": exception_type, "traceback": [],
        "current_inputs": {}, "current_outputs": [], "timestamp": now_ms(),
    }


def reap(database, settings) -> Reaped:
    """Take prompts back from dead workers and from dispatches never claimed."""
    timeout = {"timeout": settings.worker_timeout_seconds}
    unclaimed_age = {"timeout": settings.dispatch_timeout_seconds}
    with database.engine.connect() as connection:
        anything = connection.execute(
            select(Worker.name).where(Worker.session != "", Worker.last_seen < ago("timeout")).limit(1), timeout
        ).first() or connection.execute(
            select(Prompt.prompt_id).where(Prompt.state == PromptState.DISPATCHED.value,
                                           Prompt.dispatched_at < ago("timeout")).limit(1), unclaimed_age
        ).first()
    reaped = Reaped()
    if anything is None:
        return reaped
    with database.write() as session:
        dead = session.scalars(
            select(Worker).where(Worker.session != "", Worker.last_seen < ago("timeout"))
            .with_for_update(skip_locked=True), timeout
        ).all()
        for worker in dead:
            held = session.scalars(
                select(Prompt).where(Prompt.worker == worker.name, Prompt.state.in_(_ACTIVE)).with_for_update()
            ).all()
            reaped.taken += take_back(session, settings, worker, held,
                                      "the worker running this prompt stopped responding", reaped.failed)
            worker.session = ""
            worker.current_prompt = None
            reaped.dead.append(worker.name)
        unclaimed = session.scalars(
            select(Prompt).where(Prompt.state == PromptState.DISPATCHED.value, Prompt.dispatched_at < ago("timeout"))
            .with_for_update(skip_locked=True), unclaimed_age
        ).all()
        for row in unclaimed:
            # The message was lost (a broker restarted without it): not the worker's fault.
            _requeue_or_fail(row, settings, f"worker {row.worker} did not start this prompt in time", reaped.failed)
        reaped.taken += len(unclaimed)
    if reaped.taken:
        log.warning("took back %d prompt(s) from lost workers %s", reaped.taken, ", ".join(reaped.dead))
    return reaped


def take_back(session, settings, worker: Worker, held: list[Prompt], reason: str, failed: list[LostPrompt]) -> int:
    """`worker` lost the prompts `held`: requeue or fail each. Those it was running count in its
    loss streak (the worker is locked when the streak reaches the limit) and are retried on
    another worker when one can run them; those it had not started yet just go back."""
    running = [row for row in held if row.state == PromptState.RUNNING.value]
    for row in running:
        row.lost_on = [*(row.lost_on or []), worker.name]
        if row.batch_id is not None:  # a lost cell counts in the worker's failures on its batch
            cell_retries.count_failure(session.connection(), row.batch_id, worker.name)
    for row in held:
        _requeue_or_fail(row, settings, reason, failed)
    if running:
        worker.failures_in_row = (worker.failures_in_row or 0) + len(running)
        worker.prompts_failed = (worker.prompts_failed or 0) + len(running)
        lock_if_failing(worker, settings, "lost")
    return len(held)


def lock_if_failing(worker: Worker, settings, how: str) -> None:
    if settings.lock_after_failures and worker.failures_in_row >= settings.lock_after_failures and not worker.locked:
        worker.locked = True
        worker.lock_reason = (f"lost or timed out {worker.failures_in_row} prompts in a row (the last one "
                              f"{how}); locked until an operator unlocks it")
        log.error("worker %s locked: %s", worker.name, worker.lock_reason)


def _requeue_or_fail(row: Prompt, settings, reason: str, failed: list[LostPrompt]) -> None:
    if row.attempt < settings.max_attempts:
        row.state = PromptState.QUEUED.value
        row.worker = None
        row.dispatched_at = None
        row.started_at = None
        return
    error = worker_lost_error(row.prompt_id, f"{reason}; giving up after {row.attempt} attempts")
    row.state = PromptState.ERROR.value
    row.finished_at = db_now()
    row.outputs = {}
    row.messages = [["execution_error", error]]
    row.execution_error = error
    failed.append(LostPrompt(row.prompt_id, row.client_id, error, row.team))
    webhooks.PromptHooks().prompt_ended(session_connection(row), row.prompt_id, row.team, row.batch_id,
                                        row.extra_data, row.state, {}, error)


def session_connection(row: Prompt):
    """The connection of the session `row` belongs to (the reap's transaction)."""
    from sqlalchemy.orm import object_session

    return object_session(row).connection()


def announce_lost(bus, failed: list[LostPrompt], count_queue, status: bool = False) -> None:
    """Prompts that ended because their workers were lost end for their clients as from a worker:
    execution_error, the status broadcast, then the final executing."""
    if bus is None:
        return
    for lost in failed:
        bus.publish("execution_error", lost.error, prompt_id=lost.prompt_id, client_id=lost.client_id, own=False,
                    team=lost.team)
    if failed or status:
        bus.publish_status(count_queue)
    for lost in failed:
        bus.publish("executing", {"node": None, "prompt_id": lost.prompt_id},
                    prompt_id=lost.prompt_id, client_id=lost.client_id, own=False, team=lost.team)


class Reaper:
    """Reaps on a schedule for one process, only once the database has answered it for a whole
    worker timeout without a gap (see the module docstring): a gap, whether the database failed
    or this process was not running its schedule, starts the count again. `run_once` is called
    by a loop of its owner every heartbeat interval."""

    def __init__(self, database, settings, bus=None, count_queue=None, dispatch=None, storage=None):
        self.database = database
        self.storage = storage  # where a failed prompt's attempts left outputs
        self.settings = settings
        self.bus = bus
        self.count_queue = count_queue
        self.dispatch = dispatch
        self._answering_since: float | None = None
        self._answered_at = float("-inf")
        self._max_gap = max(settings.worker_timeout_seconds / 2, 2.5 * settings.heartbeat_seconds)
        self.retention = RetentionClock(database, settings)

    def run_once(self) -> Reaped | None:
        now = time.monotonic()
        timeout = self.settings.worker_timeout_seconds
        try:
            with self.database.engine.connect() as connection:
                connection.execute(select(1))
        except Exception:  # noqa: BLE001 - the database is down: start counting again when it answers
            if self._answering_since is not None:
                log.warning("reaping paused: the database is not answering", exc_info=True)
            self._answering_since = None
            return None
        try:
            prompt_counts.compact(self.database)  # bounds what every queue count reads
        except Exception:  # noqa: BLE001 - the deltas wait for the next round; counts stay exact
            log.warning("compacting the prompt counts failed", exc_info=True)
        try:
            pruned = self.retention.tick()
            if pruned:
                log.info("history retention: deleted %d ended prompts and %d batches", pruned.prompts, pruned.batches)
        except Exception:  # noqa: BLE001 - pruned again on a later round
            log.warning("pruning the history failed", exc_info=True)
        if self._answering_since is None or now - self._answered_at > self._max_gap:
            self._answering_since = now
        self._answered_at = now
        if now - self._answering_since < timeout:
            return None
        try:
            reaped = reap(self.database, self.settings)
        except Exception:  # noqa: BLE001 - counted as a gap
            log.warning("reaping failed", exc_info=True)
            self._answering_since = None
            return None
        if self.storage is not None:
            from farm.attempt_outputs import discard_attempts

            for lost in reaped.failed:
                discard_attempts(self.storage, lost.prompt_id)
        if reaped.failed or reaped.taken:
            announce_lost(self.bus, reaped.failed, self.count_queue, status=True)
            if self.dispatch is not None:
                self.dispatch()
        return reaped
