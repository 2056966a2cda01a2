"""A prompt's life on a worker: claim it, record its end, or put it back in the queue.

Every change is conditional on (prompt_id, attempt, worker, state), so a stale or duplicate
message, or a late result from a worker that was presumed dead, changes nothing. The end of a
prompt is written exactly once: `finish` retries through database outages until the write is
made or refused, and the caller tells the client nothing final before it returns True.
"""

from __future__ import annotations

import dataclasses
import logging

from typing import Callable

import tenacity
from sqlalchemy import bindparam, update
from sqlalchemy.exc import DBAPIError

from farm.db import prepared
from farm.db.clock import db_now
from farm.db.models import Prompt, PromptState, Worker
from farm.services import cell_retries as cell_retries_module

log = logging.getLogger(__name__)

_table = Prompt.__table__
_OWNED = (
    (_table.c.prompt_id == bindparam("p_id")) & (_table.c.attempt == bindparam("p_attempt"))
    & (_table.c.worker == bindparam("p_worker")) & (_table.c.state == bindparam("p_state"))
)
# Built once: these run for every prompt, and building a statement costs more than running it.
_workers = Worker.__table__
_FINISH = update(_table).where(_OWNED).values(
    state=bindparam("new_state"), outputs=bindparam("outputs"), messages=bindparam("messages"),
    execution_error=bindparam("execution_error"), finished_at=db_now(),
)
# A prompt that ended by itself (whatever its result) ends the worker's loss streak...
_COUNT_DONE = update(_workers).where(_workers.c.name == bindparam("p_worker")).values(
    prompts_done=_workers.c.prompts_done + 1, failures_in_row=0,
)
_COUNT_FAILED = update(_workers).where(_workers.c.name == bindparam("p_worker")).values(
    prompts_failed=_workers.c.prompts_failed + 1, failures_in_row=0,
)
# ...one that timed out adds to it; at the limit the worker is locked.
_COUNT_TIMEOUT = update(_workers).where(_workers.c.name == bindparam("p_worker")).values(
    prompts_failed=_workers.c.prompts_failed + 1, failures_in_row=_workers.c.failures_in_row + 1,
).returning(_workers.c.failures_in_row)
_LOCK = update(_workers).where(_workers.c.name == bindparam("p_worker"), _workers.c.locked.is_(False)).values(
    locked=True, lock_reason=bindparam("reason"))
# Claimed, with what the worker needs to run it, in one statement.
_CLAIM = update(_table).where(_OWNED).values(state=PromptState.RUNNING.value, started_at=db_now()).returning(
    _table.c.prompt_id, _table.c.attempt, _table.c.prompt, _table.c.extra_data, _table.c.outputs_to_execute,
    _table.c.client_id, _table.c.team, _table.c.batch_id, _table.c.created_at, _table.c.started_at,
    _table.c.coalesce_key,
)


def _owner(prompt_id: str, attempt: int, worker: str, state: PromptState) -> dict:
    return {"p_id": prompt_id, "p_attempt": attempt, "p_worker": worker, "p_state": state.value}


@dataclasses.dataclass(frozen=True)
class ClaimedPrompt:
    prompt_id: str
    attempt: int
    prompt: dict
    extra_data: dict
    outputs_to_execute: list
    client_id: str | None
    team: str = "default"
    batch_id: str | None = None
    created_at: object = None  # accepted, and claimed (database times): the queue wait between them
    started_at: object = None
    coalesce_key: str | None = None  # farm.graph.coalesce: None, it runs alone

    @property
    def queue_wait_seconds(self) -> float | None:
        if self.created_at is None or self.started_at is None:
            return None
        return max((self.started_at - self.created_at).total_seconds(), 0.0)


# A claim that meets a connection the database dropped (pooled connections in steady use are not
# pinged) tries again on a fresh one; a longer outage leaves the prompt dispatched, and the
# reaper puts it back in the queue once it is unclaimed for a worker timeout.
_claim_retrying = tenacity.Retrying(
    retry=tenacity.retry_if_exception_type(DBAPIError), wait=tenacity.wait_fixed(0.05),
    stop=tenacity.stop_after_attempt(3), reraise=True,
)


def claim(database, prompt_id: str, attempt: int, worker: str) -> ClaimedPrompt | None:
    def write() -> ClaimedPrompt | None:
        with database.write_connection() as connection:
            owner = _owner(prompt_id, attempt, worker, PromptState.DISPATCHED)
            row = prepared.execute(connection, _CLAIM, owner).first()
            return None if row is None else ClaimedPrompt(*row)

    return _claim_retrying(write)


def finish(database, claimed: ClaimedPrompt, worker: str, state: PromptState, outputs: dict,
           messages: list, execution_error: dict | None, *, timed_out: bool = False, lock_after: int = 0,
           give_up: Callable[[], bool] = lambda: False, max_wait: float = 5.0) -> bool:
    """Write the history entry, retrying while the database is unreachable (until `give_up()`);
    False when this attempt no longer owns the prompt (it was taken back: the result is stale).
    The worker's counters change in the same transaction; a timeout counts in its loss streak."""
    recorded, _ = finish_then(database, claimed, worker, state, outputs, messages, execution_error,
                              timed_out=timed_out, lock_after=lock_after, give_up=give_up, max_wait=max_wait)
    return recorded


def finish_then(database, claimed: ClaimedPrompt, worker: str, state: PromptState, outputs: dict,
                messages: list, execution_error: dict | None, *, then: Callable | None = None,
                timed_out: bool = False, lock_after: int = 0, give_up: Callable[[], bool] = lambda: False,
                max_wait: float = 5.0, cell_retries: int = 0,
                notify: Callable | None = None) -> tuple[bool, ClaimedPrompt | None]:
    """`finish`, and when the end is recorded, `then(connection)` in the same transaction: the
    dispatcher's `take_next`, whose row is returned as the worker's next ClaimedPrompt.

    A batch cell that failed for a reason not its own (farm.services.cell_retries) is put back in
    the queue instead, while it has `cell_retries` left: then nothing is recorded (False) and the
    worker still takes its next prompt. `notify(connection)` runs once the end is recorded, in the
    same transaction (the webhook outbox)."""
    values = {
        **_owner(claimed.prompt_id, claimed.attempt, worker, PromptState.RUNNING),
        "new_state": state.value, "outputs": outputs, "messages": messages, "execution_error": execution_error,
    }
    retry = bool(cell_retries and claimed.batch_id and state == PromptState.ERROR
                 and cell_retries_module.retryable(execution_error))

    def write() -> tuple[bool, ClaimedPrompt | None]:
        with database.write_connection() as connection:
            if retry:
                requeued = cell_retries_module.requeue(connection, claimed.prompt_id, claimed.attempt, worker,
                                                       cell_retries)
                if requeued is None:
                    return False, None  # stale
                if cell_retries_module.count_failure(connection, claimed.batch_id, worker):
                    log.warning("worker %s blocked from batch %s after %d failed cells", worker, claimed.batch_id,
                                cell_retries_module.BLOCK_AFTER)
                if requeued:
                    prepared.execute(connection, _COUNT_FAILED, {"p_worker": worker})
                    log.info("cell %s failed (%s); it runs again elsewhere", claimed.prompt_id,
                             execution_error.get("exception_type"))
                    following = then(connection) if then is not None else None
                    return False, ClaimedPrompt(*following) if following is not None else None
            if not prepared.execute(connection, _FINISH, values).rowcount:
                return False, None
            if not timed_out:
                prepared.execute(connection, _COUNT_FAILED if state == PromptState.ERROR else _COUNT_DONE,
                                 {"p_worker": worker})
            else:
                streak = prepared.execute(connection, _COUNT_TIMEOUT, {"p_worker": worker}).scalar()
                if lock_after and streak is not None and streak >= lock_after:
                    reason = f"lost or timed out {streak} prompts in a row; locked until an operator unlocks it"
                    prepared.execute(connection, _LOCK, {"p_worker": worker, "reason": reason})
                    log.error("worker %s locked: %s", worker, reason)
            if notify is not None:
                notify(connection)
            following = then(connection) if then is not None else None
            return True, ClaimedPrompt(*following) if following is not None else None

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(DBAPIError),
        wait=tenacity.wait_exponential(multiplier=0.1, max=max_wait),
        stop=lambda _state: give_up(),
        before_sleep=lambda retry_state: log.warning(
            "could not record the end of %s (%s); retrying", claimed.prompt_id, retry_state.outcome.exception()),
        reraise=True,
    )
    recorded, following = retrying(write)
    if not recorded and not retry:
        log.warning("result of %s attempt %s refused: the prompt was taken back", claimed.prompt_id, claimed.attempt)
    return recorded, following


def requeue(database, prompt_id: str, attempt: int, worker: str) -> bool:
    """Put a prompt this worker holds back at its place in the queue (a worker that stops past its
    grace): the attempt is not counted, the worker did nothing wrong."""
    with database.write() as session:
        return bool(session.execute(
            update(Prompt)
            .where(Prompt.prompt_id == prompt_id, Prompt.attempt == attempt, Prompt.worker == worker,
                   Prompt.state.in_([s.value for s in PromptState.active()]))
            .values(state=PromptState.QUEUED.value, worker=None, dispatched_at=None, started_at=None,
                    attempt=Prompt.attempt - 1)
        ).rowcount)


def claim_companions(database, dispatcher, worker: str, files: frozenset[str], loaded: frozenset[str],
                     head: ClaimedPrompt, count: int) -> list[ClaimedPrompt]:
    """Prompts to run in one group with `head` (which `worker` holds), claimed for it at once;
    see Dispatcher.take_companions. [] when there are none, or the database is unreachable."""
    if count <= 0 or head.coalesce_key is None:
        return []
    try:
        with database.write_connection() as connection:
            rows = dispatcher.take_companions(connection, worker, files, loaded, head, count)
    except DBAPIError:
        log.warning("could not look for prompts to group with %s; it runs alone", head.prompt_id, exc_info=True)
        return []
    return [ClaimedPrompt(*row) for row in rows]
