"""A prompt's life on a worker: claim it, record its end, or put it back in the queue.

Every change is conditional on (prompt_id, attempt, worker, state), so a stale or duplicate
message, or a late result from a worker that was presumed dead, changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import select, update

from farm.db.models import Prompt, PromptState
from farm.queue.dispatch import utcnow

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClaimedPrompt:
    prompt_id: str
    attempt: int
    prompt: dict
    extra_data: dict
    outputs_to_execute: list
    client_id: str | None


def claim(database, prompt_id: str, attempt: int, worker: str) -> ClaimedPrompt | None:
    with database.write() as session:
        claimed = session.execute(
            update(Prompt)
            .where(Prompt.prompt_id == prompt_id, Prompt.attempt == attempt, Prompt.worker == worker,
                   Prompt.state == PromptState.DISPATCHED.value)
            .values(state=PromptState.RUNNING.value, started_at=utcnow())
        ).rowcount
        if not claimed:
            return None
        row = session.execute(select(Prompt).where(Prompt.prompt_id == prompt_id)).scalar_one()
        return ClaimedPrompt(row.prompt_id, row.attempt, row.prompt, row.extra_data, row.outputs_to_execute,
                             row.client_id)


def finish(database, claimed: ClaimedPrompt, worker: str, state: PromptState, outputs: dict,
           messages: list, execution_error: dict | None) -> bool:
    """Write the history entry; False when this attempt no longer owns the prompt."""
    with database.write() as session:
        done = session.execute(
            update(Prompt)
            .where(Prompt.prompt_id == claimed.prompt_id, Prompt.attempt == claimed.attempt,
                   Prompt.worker == worker, Prompt.state == PromptState.RUNNING.value)
            .values(state=state.value, outputs=outputs, messages=messages, execution_error=execution_error,
                    finished_at=utcnow())
        ).rowcount
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
