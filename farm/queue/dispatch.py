"""The dispatcher: hands queued prompts, in SQL order, to idle workers that can run them.

Invariants:
- The order of pending prompts is `ORDER BY number, prompt_id` in SQL; the broker never holds a
  backlog: a worker has at most one outstanding (dispatched or running) prompt. (A deeper
  per-worker queue would leave prompts waiting behind a long one where no other worker can take
  them, and an unclaimed one would look lost.)
- A worker is offered only prompts it can run: every model file the prompt needs is in the
  worker's report. Among those, `farm.queue.placement.choose` decides (retries elsewhere,
  bounded checkpoint affinity). Draining and locked workers get nothing; nor does anyone while
  dispatch is paused farm-wide.
- One assignment is one transaction that first locks the worker's row (`FOR UPDATE` on
  PostgreSQL; `BEGIN IMMEDIATE` serializes writers on SQLite), re-checks that it is live, idle
  and steerable, then moves the chosen prompt `queued -> dispatched` with a conditional UPDATE
  (a prompt another dispatcher took meanwhile is not taken twice: the pick is made again), so any
  number of dispatchers in any number of processes can run at once.
- The message (ids only) is sent after the commit. If sending fails, the assignment is undone
  (the prompt is queued again, attempt restored) and the next dispatch retries it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading

from sqlalchemy import and_, bindparam, exists, func, not_, or_, select, update

from farm.db.clock import ago, db_now
from farm.db.models import Counter, ModelNeeds, Prompt, PromptState, Worker
from farm.queue import placement
from farm.queue.sender import Assignment

log = logging.getLogger(__name__)

PAUSED = "dispatch_paused"  # the counters row that pauses dispatch farm-wide when 1

_prompts, _workers, _needs, _counters = Prompt.__table__, Worker.__table__, ModelNeeds.__table__, Counter.__table__
_ACTIVE = [state.value for state in PromptState.active()]
_QUEUED = PromptState.QUEUED.value
_LIVE = (_workers.c.session != "") & (_workers.c.last_seen >= ago("timeout"))
_STEERABLE = _LIVE & not_(_workers.c.draining) & not_(_workers.c.locked)
_busy = exists().where(_prompts.c.worker == _workers.c.name, _prompts.c.state.in_(_ACTIVE))

# Statements built once: dispatch runs after every prompt and every submission.
_PASS = select(
    select(_counters.c.value).where(_counters.c.name == PAUSED).scalar_subquery(),
    exists().where(_prompts.c.state == _QUEUED),
    select(func.max(_needs.c.id)).scalar_subquery(),
)
_WORKERS = select(_workers.c.name, _workers.c.model_files, _workers.c.loaded_models, _busy.label("busy")).where(
    _STEERABLE)
_NEEDS_AFTER = select(_needs.c.id, _needs.c.files).where(_needs.c.id > bindparam("after"))
_LOCK_WORKER = select(_workers.c.name).where(_workers.c.name == bindparam("worker"), _STEERABLE).with_for_update()
_IS_BUSY = select(exists().where(_prompts.c.worker == bindparam("worker"), _prompts.c.state.in_(_ACTIVE)))
_CANDIDATES = (
    select(_prompts.c.prompt_id, _prompts.c.attempt, _prompts.c.front, _prompts.c.needs_id, _prompts.c.lost_on,
           and_(_prompts.c.passed_at.is_not(None), _prompts.c.passed_at < ago("max_wait")).label("overdue"))
    .where(_prompts.c.state == _QUEUED,
           or_(_prompts.c.needs_id.is_(None), _prompts.c.needs_id.in_(bindparam("needs", expanding=True))))
    .order_by(_prompts.c.number, _prompts.c.prompt_id)
    .limit(bindparam("window"))
)
_ASSIGN = (
    update(_prompts).where(_prompts.c.prompt_id == bindparam("p_id"), _prompts.c.state == _QUEUED)
    .values(state=PromptState.DISPATCHED.value, worker=bindparam("worker"), attempt=_prompts.c.attempt + 1,
            dispatched_at=db_now())
    .returning(_prompts.c.attempt)
)
_MARK_PASSED = (
    update(_prompts).where(_prompts.c.prompt_id.in_(bindparam("passed", expanding=True)),
                           _prompts.c.passed_at.is_(None))
    .values(passed_at=db_now())
)
_UNASSIGN = (
    update(_prompts)
    .where(_prompts.c.prompt_id == bindparam("p_id"), _prompts.c.attempt == bindparam("p_attempt"),
           _prompts.c.state == PromptState.DISPATCHED.value)
    .values(state=_QUEUED, worker=None, dispatched_at=None, attempt=_prompts.c.attempt - 1)
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class _Worker:
    name: str
    files: frozenset[str]
    loaded: frozenset[str]
    busy: bool


class Dispatcher:
    def __init__(self, database, sender, settings):
        self.database = database
        self.sender = sender
        self.settings = settings
        self.window = max(settings.affinity_lookahead, 8)
        # model_needs rows never change: each process keeps the ones it has seen.
        self._needs: dict[int, frozenset[str]] = {}
        self._needs_lock = threading.Lock()

    def dispatch(self, only: str | None = None, loaded: frozenset[str] | None = None) -> list[Assignment]:
        """Give every idle worker (or just `only`, whose loaded checkpoints may be passed in as
        `loaded`) a prompt it can run; return what was sent."""
        with self.database.engine.connect() as connection:
            paused, any_queued, last_needs = connection.execute(_PASS).one()
            if paused or not any_queued:
                return []
            self._learn_needs(connection, last_needs)
            live = [_Worker(row.name, placement.files_of(row.model_files),
                            placement.loaded_checkpoints(row.loaded_models), bool(row.busy))
                    for row in connection.execute(_WORKERS, {"timeout": self.settings.worker_timeout_seconds})]
        sent: list[Assignment] = []
        for worker in live:
            if worker.busy or (only is not None and worker.name != only):
                continue
            if only is not None and loaded is not None:
                worker = dataclasses.replace(worker, loaded=loaded)
            assignment = self._assign(worker, live)
            if assignment is None:
                continue
            if not self._send(assignment):
                return sent
            sent.append(assignment)
        return sent

    def paused(self) -> bool:
        with self.database.engine.connect() as connection:
            return bool(connection.execute(_PASS).one()[0])

    def _learn_needs(self, connection, last: int | None) -> None:
        if last is None or last in self._needs:
            return
        with self._needs_lock:
            after = max(self._needs, default=0)
            for row in connection.execute(_NEEDS_AFTER, {"after": after}):
                self._needs[row.id] = frozenset(row.files)

    def _assign(self, worker: _Worker, live: list[_Worker]) -> Assignment | None:
        eligible = [needs_id for needs_id, files in self._needs.items() if files <= worker.files]
        others = [other for other in live if other.name != worker.name]

        def runs_elsewhere(candidate: placement.Candidate) -> bool:
            return any(candidate.needs <= other.files and other.name not in candidate.lost_on for other in others)

        params = {"timeout": self.settings.worker_timeout_seconds, "worker": worker.name, "needs": eligible,
                  "window": self.window, "max_wait": float(self.settings.affinity_max_wait_seconds)}
        with self.database.write_connection() as connection:
            if connection.execute(_LOCK_WORKER, params).first() is None:
                return None  # dead, draining or locked since the pass began
            if connection.execute(_IS_BUSY, params).scalar():
                return None
            for _ in range(5):  # another dispatcher may take our pick between the read and the update
                candidates = [
                    placement.Candidate(row.prompt_id, row.attempt, bool(row.front),
                                        self._needs.get(row.needs_id, frozenset()) if row.needs_id else frozenset(),
                                        tuple(row.lost_on or ()), bool(row.overdue))
                    for row in connection.execute(_CANDIDATES, params)
                ]
                choice = placement.choose(candidates, worker.name, worker.loaded, self.settings.affinity_lookahead,
                                          runs_elsewhere)
                if choice is None:
                    return None
                chosen = candidates[choice.index]
                attempt = connection.execute(_ASSIGN, {"p_id": chosen.prompt_id, "worker": worker.name}).scalar()
                if attempt is not None:
                    if choice.passed:
                        connection.execute(_MARK_PASSED, {"passed": [candidates[i].prompt_id for i in choice.passed]})
                    return Assignment(chosen.prompt_id, attempt, worker.name, chosen.front)
        return None

    def _send(self, assignment: Assignment) -> bool:
        try:
            self.sender.send(assignment)
            return True
        except Exception:  # noqa: BLE001 - broker trouble must not lose the prompt
            log.exception("could not send prompt %s to %s; it stays queued", assignment.prompt_id, assignment.worker)
            with self.database.write_connection() as connection:
                connection.execute(_UNASSIGN, {"p_id": assignment.prompt_id, "p_attempt": assignment.attempt})
            return False


def set_paused(database, paused: bool) -> None:
    """Pause or resume dispatch farm-wide (running prompts go on; queued ones wait)."""
    from farm.db.upsert import upsert_counter

    with database.write_connection() as connection:
        upsert_counter(connection, PAUSED, 1 if paused else 0)
