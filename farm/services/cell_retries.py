"""A batch cell that fails for a reason other than its own inputs (out of memory, a timeout, its
worker lost) runs again on another worker, up to FARM_CELL_RETRIES times; a worker that fails
BLOCK_AFTER cells of one batch takes no more of that batch (listed on the batch, removable).
A node error caused by the cell's inputs is final at once: running it again would fail again."""

from __future__ import annotations

from sqlalchemy import bindparam, select, update

from farm.db.models import BatchBlock, Prompt, PromptState
from farm.db.upsert import insert_for

BLOCK_AFTER = 3
# What a cell's error says when the failure was not of the cell's making.
RETRYABLE_TYPES = ("Timeout", "WorkerLost")

_prompts, _blocks = Prompt.__table__, BatchBlock.__table__
_OWNED_CELL = select(_prompts.c.lost_on, _prompts.c.retries).where(
    _prompts.c.prompt_id == bindparam("p_id"), _prompts.c.attempt == bindparam("p_attempt"),
    _prompts.c.worker == bindparam("p_worker"), _prompts.c.state == PromptState.RUNNING.value,
).with_for_update()
_REQUEUE = (
    update(_prompts).where(_prompts.c.prompt_id == bindparam("p_id"))
    .values(state=PromptState.QUEUED.value, worker=None, dispatched_at=None, started_at=None,
            lost_on=bindparam("lost_on"), retries=_prompts.c.retries + 1)
)


def retryable(error: dict | None) -> bool:
    kind = str((error or {}).get("exception_type") or "")
    return kind in RETRYABLE_TYPES or kind.endswith("OutOfMemoryError")


def requeue(connection, prompt_id: str, attempt: int, worker: str, max_retries: int) -> bool | None:
    """Put the cell this worker ran back in the queue, to run elsewhere; None when the attempt is
    not the worker's any more (stale), False when its retries are used up."""
    row = connection.execute(_OWNED_CELL, {"p_id": prompt_id, "p_attempt": attempt, "p_worker": worker}).first()
    if row is None:
        return None
    if row.retries >= max_retries:
        return False
    lost_on = list(row.lost_on or [])
    connection.execute(_REQUEUE, {"p_id": prompt_id, "lost_on": lost_on if worker in lost_on else [*lost_on, worker]})
    return True


def count_failure(connection, batch_id: str, worker: str) -> bool:
    """One more failure of `worker` on `batch_id`; True when that blocks it from the batch now."""
    statement = insert_for(connection, _blocks).values(batch_id=batch_id, worker=worker, failures=1,
                                                       blocked=BLOCK_AFTER <= 1)
    connection.execute(statement.on_conflict_do_update(
        index_elements=["batch_id", "worker"], set_={"failures": _blocks.c.failures + 1}))
    failures = connection.execute(select(_blocks.c.failures).where(
        _blocks.c.batch_id == batch_id, _blocks.c.worker == worker)).scalar_one()
    if failures >= BLOCK_AFTER:
        return bool(connection.execute(update(_blocks).where(
            _blocks.c.batch_id == batch_id, _blocks.c.worker == worker, _blocks.c.blocked.is_(False)
        ).values(blocked=True)).rowcount)
    return False

