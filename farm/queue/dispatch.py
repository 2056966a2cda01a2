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

from sqlalchemy import func, select, update

from farm.db.models import Prompt, PromptState, Worker
from farm.queue.sender import Assignment

log = logging.getLogger(__name__)


_ANY_QUEUED = select(Prompt.prompt_id).where(Prompt.state == PromptState.QUEUED.value).limit(1)


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
        with self.database.reading() as session:
            return workers if session.scalar(_ANY_QUEUED) is not None else []

    def _idle_workers(self) -> list[str]:
        with self.database.reading() as session:
            if session.scalar(_ANY_QUEUED) is None:
                return []
            alive_since = utcnow() - self.worker_timeout
            outstanding = (
                select(Prompt.worker, func.count().label("n"))
                .where(Prompt.state.in_([s.value for s in PromptState.active()]))
                .group_by(Prompt.worker)
                .subquery()
            )
            rows = session.execute(
                select(Worker.name, func.coalesce(outstanding.c.n, 0))
                .outerjoin(outstanding, outstanding.c.worker == Worker.name)
                .where(Worker.last_seen >= alive_since)
                .order_by(Worker.last_seen.desc())
            ).all()
        return [name for name, count in rows if count < self.depth]

    def _assign_one(self, worker_name: str) -> Assignment | None:
        with self.database.write() as session:
            worker = session.execute(
                select(Worker).where(Worker.name == worker_name).with_for_update()
            ).scalar_one_or_none()
            if worker is None or worker.last_seen < utcnow() - self.worker_timeout:
                return None
            outstanding = session.scalar(
                select(func.count()).select_from(Prompt).where(
                    Prompt.worker == worker_name,
                    Prompt.state.in_([s.value for s in PromptState.active()]),
                )
            )
            if outstanding >= self.depth:
                return None
            prompt = session.execute(
                select(Prompt)
                .where(Prompt.state == PromptState.QUEUED.value)
                .order_by(Prompt.number, Prompt.prompt_id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).scalar_one_or_none()
            if prompt is None:
                return None
            prompt.state = PromptState.DISPATCHED.value
            prompt.worker = worker_name
            prompt.attempt += 1
            prompt.dispatched_at = utcnow()
            return Assignment(prompt.prompt_id, prompt.attempt, worker_name, prompt.front)

    def _send(self, assignment: Assignment) -> bool:
        try:
            self.sender.send(assignment)
            return True
        except Exception:  # noqa: BLE001 - broker trouble must not lose the prompt
            log.exception("could not send prompt %s to %s; it stays queued", assignment.prompt_id, assignment.worker)
            with self.database.write() as session:
                session.execute(
                    update(Prompt)
                    .where(
                        Prompt.prompt_id == assignment.prompt_id,
                        Prompt.attempt == assignment.attempt,
                        Prompt.state == PromptState.DISPATCHED.value,
                    )
                    .values(state=PromptState.QUEUED.value, worker=None, dispatched_at=None,
                            attempt=Prompt.attempt - 1)
                )
            return False
