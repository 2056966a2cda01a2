"""Changing the queue and the history: clear and delete pending prompts, interrupt running ones,
clear and delete history entries (POST /queue, /interrupt, /history, and the jobs API)."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from farm.db.models import Prompt, PromptState, Worker
from farm.queue.dispatch import utcnow

_table = Prompt.__table__
_ENDED = [*[s.value for s in PromptState.finished()], PromptState.CANCELLED.value]
_ACTIVE = [s.value for s in PromptState.active()]


def cancel_pending(database, prompt_ids: list[str] | None = None) -> list[str]:
    """Take queued prompts out of the queue (all when `prompt_ids` is None); return their ids."""
    condition = _table.c.state == PromptState.QUEUED.value
    if prompt_ids is not None:
        if not prompt_ids:
            return []
        condition = condition & _table.c.prompt_id.in_([str(i) for i in prompt_ids])
    with database.write_connection() as connection:
        ids = [row[0] for row in connection.execute(select(_table.c.prompt_id).where(condition))]
        if ids:
            connection.execute(
                update(_table).where(condition, _table.c.prompt_id.in_(ids))
                .values(state=PromptState.CANCELLED.value, finished_at=utcnow())
            )
    return ids


def running(database, prompt_id: str | None = None) -> list[tuple[str, str, str]]:
    """(prompt_id, worker name, worker host) of prompts dispatched or running on a worker."""
    query = (
        select(_table.c.prompt_id, _table.c.worker, Worker.__table__.c.host)
        .join(Worker.__table__, Worker.__table__.c.name == _table.c.worker)
        .where(_table.c.state.in_(_ACTIVE))
    )
    if prompt_id is not None:
        query = query.where(_table.c.prompt_id == prompt_id)
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def interrupt(context, prompt_id: str | None = None) -> list[str]:
    """Interrupt running prompts (one, or all); pending prompts are not touched."""
    targets = running(context.database, prompt_id)
    if context.control is not None:
        for target_id, worker, host in targets:
            context.control.interrupt(target_id, worker, host)
    return [target_id for target_id, _, _ in targets]


def delete_history(database, prompt_ids: list[str] | None = None) -> int:
    """Forget ended prompts (all when `prompt_ids` is None); running and queued ones stay."""
    condition = _table.c.state.in_(_ENDED)
    if prompt_ids is not None:
        condition = condition & _table.c.prompt_id.in_([str(i) for i in prompt_ids])
    with database.write_connection() as connection:
        return connection.execute(delete(_table).where(condition)).rowcount
