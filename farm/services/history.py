"""Reading the queue and the history in ComfyUI's shapes (spec §2.3, §3.4, §3.7, §6)."""

from __future__ import annotations

from sqlalchemy import select

from farm.db import prompt_counts
from farm.db.models import Prompt, PromptState
from farm.services.submit import number_json
from farm.services.waiting import waiting_reasons

FINISHED = [s.value for s in PromptState.finished()]


def queue_item(row: Prompt) -> list:
    return [number_json(row.number), row.prompt_id, row.prompt, row.extra_data, row.outputs_to_execute]


def _team_filter(query, team: str | None):
    """`team`'s prompts only; None: every team's (admins, auth off)."""
    return query if team is None else query.where(Prompt.team == team)


_ACTIVE = [s.value for s in PromptState.active()]
_OPEN = [PromptState.QUEUED.value, *_ACTIVE]
# GET /queue lists at most this many pending prompts when the request names no `limit`, and never
# more than QUEUE_MAX_LIMIT: ComfyUI lists its whole queue, which a farm's 100,000 queued prompts
# (graphs included) would make a response of gigabytes. queue_remaining still counts them all.
QUEUE_DEFAULT_LIMIT = 200
QUEUE_MAX_LIMIT = 10000
_QUEUE_COLUMNS = (Prompt.number, Prompt.prompt_id, Prompt.prompt, Prompt.extra_data, Prompt.outputs_to_execute,
                  Prompt.state, Prompt.needs_id)


def queue(database, settings=None, team: str | None = None, limit: int | None = None, offset: int = 0) -> dict:
    """Running (dispatched or running, on any worker) and pending prompts of `team` (None: all),
    in run order; pending ones from `offset`, at most `limit` of them (see QUEUE_DEFAULT_LIMIT).
    A pending prompt that waits for something other than its turn says why in
    extra_data.farm_waiting_for."""
    limit = QUEUE_DEFAULT_LIMIT if limit is None else max(0, min(limit, QUEUE_MAX_LIMIT))
    order = (Prompt.queue_rank, Prompt.number, Prompt.prompt_id)
    with database.reading() as session:  # plain rows, not ORM objects: a page is 1,000 of them
        running = session.execute(_team_filter(
            select(*_QUEUE_COLUMNS).where(Prompt.state.in_(_ACTIVE)).order_by(*order), team)).all()
        waiting = session.execute(_team_filter(
            select(*_QUEUE_COLUMNS).where(Prompt.state == PromptState.QUEUED.value).order_by(*order), team)
            .offset(max(offset, 0)).limit(limit)).all()
    reasons = {} if settings is None else waiting_reasons(database, settings, waiting)
    pending = []
    for row in waiting:
        item = queue_item(row)
        if row.prompt_id in reasons:
            item[3] = {**(item[3] or {}), "farm_waiting_for": reasons[row.prompt_id]}
        pending.append(item)
    return {"queue_running": [queue_item(r) for r in running], "queue_pending": pending}


def queue_remaining(database) -> int:
    """ComfyUI's queue_remaining: pending plus running prompts, of every team (O(1): kept counts)."""
    with database.engine.connect() as connection:
        return prompt_counts.count(connection, _OPEN)


def history_entry(row: Prompt) -> dict:
    outputs = row.outputs or {}
    return {
        "prompt": queue_item(row),
        "outputs": outputs,
        "status": {
            "status_str": "success" if row.state == PromptState.SUCCESS.value else "error",
            "completed": row.state == PromptState.SUCCESS.value,
            "messages": row.messages or [],
        },
        "meta": {
            node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
            for node_id in outputs
        },
    }


def history_one(database, prompt_id: str, team: str | None = None) -> dict:
    with database.reading() as session:
        row = session.execute(_team_filter(
            select(Prompt).where(Prompt.prompt_id == prompt_id, Prompt.state.in_(FINISHED)), team)
        ).scalar_one_or_none()
    return {} if row is None else {prompt_id: history_entry(row)}


def history_page(database, max_items: int | None, offset: int | None, cap: int, team: str | None = None) -> dict:
    """ComfyUI's paging over `team`'s history (None: all): oldest first; `max_items` alone gives
    the most recent M (spec §3.7). At most `cap` entries (ComfyUI keeps no more than 10,000).

    Never counts the history: the most recent M are read newest first and turned around, and an
    `offset` skips from the oldest end along the index (costing the entries skipped)."""
    if offset is None or offset < 0:
        limit = cap if max_items is None else min(max_items, cap)
        if limit <= 0:
            return {}
        newest_first = True
    else:
        limit = cap if max_items is None else min(max(max_items, 1), cap)
        newest_first = False
    query = _team_filter(select(Prompt).where(Prompt.finished_at.is_not(None), Prompt.state.in_(FINISHED)), team)
    if newest_first:
        query = query.order_by(Prompt.finished_at.desc(), Prompt.prompt_id.desc()).limit(limit)
    else:
        query = query.order_by(Prompt.finished_at, Prompt.prompt_id).offset(offset).limit(limit)
    with database.reading() as session:
        rows = session.execute(query).scalars().all()
    if newest_first:
        rows.reverse()
    return {row.prompt_id: history_entry(row) for row in rows}
