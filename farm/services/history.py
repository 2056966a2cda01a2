"""Reading the queue and the history in ComfyUI's shapes (spec §2.3, §3.4, §3.7, §6)."""

from __future__ import annotations

from sqlalchemy import func, select

from farm.db.models import Prompt, PromptState
from farm.services.submit import number_json
from farm.services.waiting import waiting_reasons

FINISHED = [s.value for s in PromptState.finished()]


def queue_item(row: Prompt) -> list:
    return [number_json(row.number), row.prompt_id, row.prompt, row.extra_data, row.outputs_to_execute]


def _team_filter(query, team: str | None):
    """`team`'s prompts only; None: every team's (admins, auth off)."""
    return query if team is None else query.where(Prompt.team == team)


def queue(database, settings=None, team: str | None = None) -> dict:
    """Running (dispatched or running, on any worker) and pending prompts of `team` (None: all),
    in run order. A pending prompt that waits for something other than its turn says why in
    extra_data.farm_waiting_for."""
    with database.reading() as session:
        rows = session.execute(_team_filter(
            select(Prompt)
            .where(Prompt.state.in_([PromptState.QUEUED.value, *[s.value for s in PromptState.active()]]))
            .order_by(Prompt.queue_rank, Prompt.number, Prompt.prompt_id), team)
        ).scalars().all()
    reasons = {} if settings is None else waiting_reasons(database, settings, rows)
    pending = []
    for row in rows:
        if row.state == PromptState.QUEUED.value:
            item = queue_item(row)
            if row.prompt_id in reasons:
                item[3] = {**(item[3] or {}), "farm_waiting_for": reasons[row.prompt_id]}
            pending.append(item)
    return {
        "queue_running": [queue_item(r) for r in rows if r.state != PromptState.QUEUED.value],
        "queue_pending": pending,
    }


def queue_remaining(database) -> int:
    with database.reading() as session:
        return session.scalar(
            select(func.count()).select_from(Prompt).where(
                Prompt.state.in_([PromptState.QUEUED.value, *[s.value for s in PromptState.active()]])
            )
        )


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
    the most recent M (spec §3.7)."""
    with database.reading() as session:
        total = session.scalar(_team_filter(
            select(func.count()).select_from(Prompt).where(Prompt.state.in_(FINISHED)), team))
        if offset is None or offset < 0:
            limit = cap if max_items is None else max_items
            if limit < 0:
                return {}
            start = max(total - limit, 0)
        else:
            start = offset
            limit = cap if max_items is None else max(max_items, 1)
        if start >= total or limit == 0:
            return {}
        rows = session.execute(_team_filter(
            select(Prompt).where(Prompt.state.in_(FINISHED))
            .order_by(Prompt.finished_at, Prompt.prompt_id)
            .offset(start).limit(limit), team)
        ).scalars().all()
    return {row.prompt_id: history_entry(row) for row in rows}
