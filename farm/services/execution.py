"""A prompt's life on a worker: claim it, record its end, or put it back in the queue.

Every change is conditional on (prompt_id, attempt, worker, state), so a stale or duplicate
message, or a late result from a worker that was presumed dead, changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import bindparam, select, update

from farm.db.models import Prompt, PromptState
from farm.queue.dispatch import utcnow

log = logging.getLogger(__name__)

_table = Prompt.__table__
_OWNED = (
    (_table.c.prompt_id == bindparam("p_id")) & (_table.c.attempt == bindparam("p_attempt"))
    & (_table.c.worker == bindparam("p_worker")) & (_table.c.state == bindparam("p_state"))
)
# Built once: these run for every prompt, and building a statement costs more than running it.
_CLAIM = update(_table).where(_OWNED).values(state=PromptState.RUNNING.value, started_at=bindparam("now"))
_FINISH = update(_table).where(_OWNED).values(
    state=bindparam("new_state"), outputs=bindparam("outputs"), messages=bindparam("messages"),
    execution_error=bindparam("execution_error"), finished_at=bindparam("now"),
)
_CLAIMED_ROW = select(
    _table.c.prompt_id, _table.c.attempt, _table.c.prompt, _table.c.extra_data, _table.c.outputs_to_execute,
    _table.c.client_id,
).where(_table.c.prompt_id == bindparam("p_id"))


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


def claim(database, prompt_id: str, attempt: int, worker: str) -> ClaimedPrompt | None:
    with database.write_connection() as connection:
        claimed = connection.execute(
            _CLAIM, {**_owner(prompt_id, attempt, worker, PromptState.DISPATCHED), "now": utcnow()}
        ).rowcount
        if not claimed:
            return None
        return ClaimedPrompt(*connection.execute(_CLAIMED_ROW, {"p_id": prompt_id}).one())


def finish(database, claimed: ClaimedPrompt, worker: str, state: PromptState, outputs: dict,
           messages: list, execution_error: dict | None) -> bool:
    """Write the history entry; False when this attempt no longer owns the prompt."""
    with database.write_connection() as connection:
        done = connection.execute(_FINISH, {
            **_owner(claimed.prompt_id, claimed.attempt, worker, PromptState.RUNNING),
            "new_state": state.value, "outputs": outputs, "messages": messages,
            "execution_error": execution_error, "now": utcnow(),
        }).rowcount
    if not done:
        log.warning("result of %s attempt %s refused: the prompt was taken back", claimed.prompt_id, claimed.attempt)
    return bool(done)


def requeue(database, prompt_id: str, attempt: int, worker: str) -> bool:
    """Put a prompt this worker holds back at its place in the queue (worker shutting down)."""
    with database.write() as session:
        return bool(session.execute(
            update(Prompt)
            .where(Prompt.prompt_id == prompt_id, Prompt.attempt == attempt, Prompt.worker == worker,
                   Prompt.state.in_([s.value for s in PromptState.active()]))
            .values(state=PromptState.QUEUED.value, worker=None, dispatched_at=None, started_at=None)
        ).rowcount)
