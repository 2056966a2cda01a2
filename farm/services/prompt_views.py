"""What the dashboard shows of prompts: one prompt's run (each node's state in it, the failing node
with its exception, the timeline of its attempts), and the history, keyset-paged newest first."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select

from farm.db.models import Prompt, PromptState
from farm.services.principal import Principal

FINISHED = [*(s.value for s in PromptState.finished()), PromptState.CANCELLED.value]
MAX_PAGE = 200


def _node_states(row: Prompt) -> dict[str, str]:
    """node id -> cached | ran | failed | not reached (or waiting, before the prompt ends)."""
    prompt = row.prompt or {}
    if row.state not in FINISHED:
        return {node_id: "waiting" if row.state == PromptState.QUEUED.value else "running" for node_id in prompt}
    messages = {event: data for event, data in (row.messages or []) if isinstance(data, dict)}
    cached = set((messages.get("execution_cached") or {}).get("nodes") or [])
    states = {node_id: ("cached" if node_id in cached else "not reached") for node_id in prompt}
    error = row.execution_error or messages.get("execution_error") or messages.get("execution_interrupted")
    if row.state == PromptState.SUCCESS.value:
        return {node_id: state if state == "cached" else "ran" for node_id, state in states.items()}
    if error:
        for node_id in error.get("executed") or []:
            states[str(node_id)] = "ran"
        if error.get("node_id") is not None:
            states[str(error["node_id"])] = "failed" if row.state == PromptState.ERROR.value else "interrupted"
    return states


def prompt_run(database, principal: Principal, prompt_id: str) -> dict | None:
    with database.reading() as session:
        row = session.get(Prompt, prompt_id)
    if row is None or not principal.sees(row.team):
        return None
    states = _node_states(row)
    error = row.execution_error
    nodes = [{"id": node_id, "class_type": node.get("class_type"), "title": (node.get("_meta") or {}).get("title"),
              "state": states.get(node_id, ""), "inputs": node.get("inputs", {})}
             for node_id, node in sorted((row.prompt or {}).items(), key=lambda item: _natural(item[0]))]
    images = [{**item, "node": node_id} for node_id, ui in (row.outputs or {}).items()
              for item in (ui or {}).get("images", []) or [] if isinstance(item, dict)]
    return {
        "prompt_id": row.prompt_id, "team": row.team, "state": row.state, "number": row.number,
        "batch_id": row.batch_id, "cell_index": row.cell_index, "cell_values": row.cell_values,
        "worker": row.worker, "attempt": row.attempt, "lost_on": row.lost_on or [], "retries": row.retries,
        "nodes": nodes, "error": error, "images": images,
        "timeline": [(label, moment.isoformat(timespec="milliseconds")) for label, moment in (
            ("queued", row.created_at), ("dispatched", row.dispatched_at), ("started", row.started_at),
            ("finished", row.finished_at)) if moment is not None],
    }


def _natural(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def history(database, principal: Principal, *, state: str | None = None, team: str | None = None,
            batch_id: str | None = None, worker: str | None = None, since: dt.datetime | None = None,
            before: str | None = None, limit: int = 50) -> dict:
    """Ended prompts newest first. `before` is the previous page's `next` ("<finished_at>|<id>"):
    keyset paging on (finished_at, prompt_id), never OFFSET."""
    limit = max(1, min(int(limit), MAX_PAGE))
    query = (select(Prompt.prompt_id, Prompt.team, Prompt.state, Prompt.worker, Prompt.batch_id, Prompt.cell_index,
                    Prompt.finished_at, Prompt.started_at, Prompt.outputs, Prompt.execution_error)
             .where(Prompt.finished_at.is_not(None), Prompt.state.in_(FINISHED))
             .order_by(Prompt.finished_at.desc(), Prompt.prompt_id.desc()).limit(limit + 1))
    scope = principal.scope
    if scope is not None:
        query = query.where(Prompt.team == scope)
    elif team:
        query = query.where(Prompt.team == team)
    if state:
        query = query.where(Prompt.state == state)
    if batch_id:
        query = query.where(Prompt.batch_id == batch_id)
    if worker:
        query = query.where(Prompt.worker == worker)
    if since is not None:
        query = query.where(Prompt.finished_at >= since)
    if before:
        moment, _, last_id = before.partition("|")
        try:
            at = dt.datetime.fromisoformat(moment)
        except ValueError:
            at = None
        if at is not None:
            query = query.where(or_(Prompt.finished_at < at, and_(Prompt.finished_at == at, Prompt.prompt_id < last_id)))
    with database.reading() as session:
        rows = session.execute(query).all()
    page = rows[:limit]
    items = []
    for row in page:
        thumb = next((dict(item) for ui in (row.outputs or {}).values()
                      for item in (ui or {}).get("images", []) or [] if isinstance(item, dict)), None)
        items.append({"prompt_id": row.prompt_id, "team": row.team, "state": row.state, "worker": row.worker,
                      "batch_id": row.batch_id, "cell_index": row.cell_index,
                      "finished_at": row.finished_at.isoformat(timespec="milliseconds"),
                      "seconds": round((row.finished_at - row.started_at).total_seconds(), 3)
                      if row.started_at else None,
                      "error": (row.execution_error or {}).get("exception_type"), "thumbnail": thumb})
    last = page[-1] if page else None
    return {"prompts": items,
            "next": f"{last.finished_at.isoformat()}|{last.prompt_id}" if last is not None and len(rows) > limit
            else None}
