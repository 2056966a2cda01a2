"""Changing the queue and the history: clear and delete pending prompts, interrupt running ones,
clear and delete history entries (POST /queue, /interrupt, /history, and the jobs API)."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from farm.db.clock import db_now
from farm.db.models import Prompt, PromptState, Worker

_table = Prompt.__table__
_ENDED = [*[s.value for s in PromptState.finished()], PromptState.CANCELLED.value]
_ACTIVE = [s.value for s in PromptState.active()]


# One statement decides and changes: a prompt dispatched meanwhile is neither cancelled nor reported.
_CANCEL = (
    update(_table).where(_table.c.state.in_([PromptState.QUEUED.value, PromptState.PAUSED.value]))
    .values(state=PromptState.CANCELLED.value, finished_at=db_now()).returning(_table.c.prompt_id)
)
# Ids per statement: PostgreSQL takes at most 65,535 parameters, SQLite 32,766.
_IDS_PER_STATEMENT = 10000


def _of_team(statement, team: str | None):
    """Limited to `team`'s prompts; None: every team's (admins, auth off)."""
    return statement if team is None else statement.where(_table.c.team == team)


def cancel_pending(database, prompt_ids: list[str] | None = None, team: str | None = None) -> list[str]:
    """Take `team`'s pending prompts (queued, or paused in a batch) out of the queue (all of them
    when `prompt_ids` is None);
    return their ids. Another team's ids are left alone."""
    ids = None if prompt_ids is None else list(dict.fromkeys(str(i) for i in prompt_ids))
    cancelled: list[str] = []
    statement = _of_team(_CANCEL, team)
    with database.write_connection() as connection:
        if ids is None:
            cancelled = list(connection.execute(statement).scalars())
        for start in range(0, len(ids or ()), _IDS_PER_STATEMENT):
            chunk = ids[start:start + _IDS_PER_STATEMENT]
            cancelled += connection.execute(statement.where(_table.c.prompt_id.in_(chunk))).scalars()
    return cancelled


def running(database, prompt_id: str | None = None, team: str | None = None) -> list[tuple[str, str, str]]:
    """(prompt_id, worker name, worker host) of `team`'s prompts dispatched or running on a worker."""
    query = _of_team(
        select(_table.c.prompt_id, _table.c.worker, Worker.__table__.c.host)
        .join(Worker.__table__, Worker.__table__.c.name == _table.c.worker)
        .where(_table.c.state.in_(_ACTIVE)), team
    )
    if prompt_id is not None:
        query = query.where(_table.c.prompt_id == prompt_id)
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def interrupt(context, prompt_id: str | None = None, team: str | None = None) -> list[str]:
    """Interrupt `team`'s running prompts (one, or all); pending prompts are not touched."""
    targets = running(context.database, prompt_id, team)
    if context.control is not None:
        for target_id, worker, host in targets:
            context.control.interrupt(target_id, worker, host)
    return [target_id for target_id, _, _ in targets]


def delete_history(database, prompt_ids: list[str] | None = None, team: str | None = None) -> int:
    """Forget `team`'s ended prompts (all when `prompt_ids` is None); running and queued ones stay."""
    condition = _table.c.state.in_(_ENDED)
    if team is not None:
        condition = condition & (_table.c.team == team)
    if prompt_ids is not None:
        condition = condition & _table.c.prompt_id.in_([str(i) for i in prompt_ids])
    with database.write_connection() as connection:
        return connection.execute(delete(_table).where(condition)).rowcount
