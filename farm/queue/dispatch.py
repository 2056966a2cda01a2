"""The dispatcher: hands queued prompts, in SQL order, to idle workers.

Invariants:
- The order of pending prompts is `ORDER BY number, prompt_id` in SQL; the broker never holds a
  backlog, only at most `dispatch_depth` outstanding (dispatched or running) prompts per worker.
- One assignment is one transaction that first locks the worker's row (`FOR UPDATE` on
  PostgreSQL; `BEGIN IMMEDIATE` serializes writers on SQLite), re-counts its outstanding prompts,
  then takes the first queued prompt (`FOR UPDATE SKIP LOCKED`), so any number of dispatchers in
  any number of processes can run at once without double-assigning a prompt or over-filling a
  worker.
- The message (ids only) is sent after the commit. If sending fails, the assignment is undone
  (the prompt is queued again, attempt restored) and the next dispatch retries it.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import bindparam, func, select, update

from farm.db.models import Prompt, PromptState, Worker
from farm.queue.sender import Assignment

log = logging.getLogger(__name__)


# Statements built once: dispatch runs after every prompt and every submission.
_prompts, _workers = Prompt.__table__, Worker.__table__
_ACTIVE = [state.value for state in PromptState.active()]
_ANY_QUEUED = select(_prompts.c.prompt_id).where(_prompts.c.state == PromptState.QUEUED.value).limit(1)
_outstanding = (
    select(_prompts.c.worker, func.count().label("n"))
    .where(_prompts.c.state.in_(_ACTIVE)).group_by(_prompts.c.worker).subquery()
)
_LIVE_WORKERS = (
    select(_workers.c.name, func.coalesce(_outstanding.c.n, 0))
    .outerjoin(_outstanding, _outstanding.c.worker == _workers.c.name)
    .where(_workers.c.last_seen >= bindparam("alive_since"))
    .order_by(_workers.c.last_seen.desc())
)
_LOCK_WORKER = select(_workers.c.last_seen).where(_workers.c.name == bindparam("worker")).with_for_update()
_COUNT_OUTSTANDING = (
    select(func.count()).select_from(_prompts)
    .where(_prompts.c.worker == bindparam("worker"), _prompts.c.state.in_(_ACTIVE))
)
_HEAD_OF_QUEUE = (
    select(_prompts.c.prompt_id, _prompts.c.attempt, _prompts.c.front)
    .where(_prompts.c.state == PromptState.QUEUED.value)
    .order_by(_prompts.c.number, _prompts.c.prompt_id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_ASSIGN = (
    update(_prompts).where(_prompts.c.prompt_id == bindparam("p_id"))
    .values(state=PromptState.DISPATCHED.value, worker=bindparam("worker"), attempt=bindparam("new_attempt"),
            dispatched_at=bindparam("now"))
)
_UNASSIGN = (
    update(_prompts)
    .where(_prompts.c.prompt_id == bindparam("p_id"), _prompts.c.attempt == bindparam("p_attempt"),
           _prompts.c.state == PromptState.DISPATCHED.value)
    .values(state=PromptState.QUEUED.value, worker=None, dispatched_at=None, attempt=_prompts.c.attempt - 1)
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Dispatcher:
    def __init__(self, database, sender, settings):
        self.database = database
        self.sender = sender
        self.depth = settings.dispatch_depth
        self.worker_timeout = dt.timedelta(seconds=settings.worker_timeout_seconds)

    def dispatch(self, only: str | None = None) -> list[Assignment]:
        """Fill every idle live worker (or just `only`) from the head of the queue; return what was sent."""
        sent: list[Assignment] = []
        for worker in self._idle_workers() if only is None else self._if_queued([only]):
            while True:
                assignment = self._assign_one(worker)
                if assignment is None:
                    break
                if not self._send(assignment):
                    return sent
                sent.append(assignment)
        return sent

    def _if_queued(self, workers: list[str]) -> list[str]:
        with self.database.engine.connect() as connection:
            return workers if connection.execute(_ANY_QUEUED).first() is not None else []

    def _idle_workers(self) -> list[str]:
        with self.database.engine.connect() as connection:
            if connection.execute(_ANY_QUEUED).first() is None:
                return []
            rows = connection.execute(_LIVE_WORKERS, {"alive_since": utcnow() - self.worker_timeout}).all()
        return [name for name, count in rows if count < self.depth]

    def _assign_one(self, worker_name: str) -> Assignment | None:
        now = utcnow()
        with self.database.write_connection() as connection:
            last_seen = connection.execute(_LOCK_WORKER, {"worker": worker_name}).scalar()
            if last_seen is None or last_seen < now - self.worker_timeout:
                return None
            if connection.execute(_COUNT_OUTSTANDING, {"worker": worker_name}).scalar() >= self.depth:
                return None
            head = connection.execute(_HEAD_OF_QUEUE).first()
            if head is None:
                return None
            attempt = head.attempt + 1
            connection.execute(_ASSIGN, {"p_id": head.prompt_id, "worker": worker_name, "new_attempt": attempt,
                                         "now": now})
            return Assignment(head.prompt_id, attempt, worker_name, head.front)

    def _send(self, assignment: Assignment) -> bool:
        try:
            self.sender.send(assignment)
            return True
        except Exception:  # noqa: BLE001 - broker trouble must not lose the prompt
            log.exception("could not send prompt %s to %s; it stays queued", assignment.prompt_id, assignment.worker)
            with self.database.write_connection() as connection:
                connection.execute(_UNASSIGN, {"p_id": assignment.prompt_id, "p_attempt": assignment.attempt})
            return False
