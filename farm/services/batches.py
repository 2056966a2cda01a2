"""Studio batches once accepted (farm.services.batch_submit accepts them): read them (list, detail
with counts, progress, ETA and outputs, cells) and act on them.

Pausing moves a batch's queued cells to `paused` (the dispatcher never sees them; running cells
finish); resuming puts them back at their place. Cancelling cancels queued and paused cells and
interrupts running ones. Retrying puts failed, interrupted and cancelled cells back in the queue
(their failure history starts over). Cells that fail for reasons not their own are retried by
themselves (farm.services.cell_retries); a worker blocked from a batch is listed on it and can be
let back (`unblock`).
"""

from __future__ import annotations

from sqlalchemy import and_, delete, func, or_, select, update

from farm.db.clock import db_now
from farm.db.models import Batch, BatchBlock, Prompt, PromptState, Team
from farm.graph import errors
from farm.services import audit, queue_control, webhooks
from farm.services.principal import Principal
from farm.services.submit import rank_of

STATES = ("queued", "running", "paused", "done", "failed", "cancelled")
ACTIONS = ("pause", "resume", "cancel", "retry", "priority")
MAX_PAGE = 500

_prompts = Prompt.__table__
_PENDING = [PromptState.QUEUED.value, PromptState.PAUSED.value]
_RETRYABLE = [PromptState.ERROR.value, PromptState.INTERRUPTED.value, PromptState.CANCELLED.value]


class BatchError(Exception):
    """A batch request refused: HTTP status and the body in ComfyUI's error shape."""

    def __init__(self, status: int, error: dict, node_errors: dict | None = None):
        super().__init__(error.get("message"))
        self.status, self.error, self.node_errors = status, error, node_errors or {}

    def body(self) -> dict:
        return {"error": self.error, "node_errors": self.node_errors}


def invalid(message: str, details: str = "", **extra) -> BatchError:
    return BatchError(400, errors.error("invalid_batch", message, details, extra or None))


def team_row(database, team: str) -> Team:
    with database.reading() as session:
        row = session.get(Team, team)
    if row is None:
        raise BatchError(403, errors.error("forbidden", f"team {team!r} does not exist any more"))
    return row


def seconds_per_prompt(database, condition) -> float | None:
    duration = duration_seconds(database)
    with database.reading() as session:
        value = session.scalar(
            select(func.avg(duration)).where(condition, Prompt.state == PromptState.SUCCESS.value,
                                              Prompt.started_at.is_not(None))
        )
    return round(float(value), 3) if value is not None else None


def duration_seconds(database):
    if database.is_sqlite:
        return (func.julianday(Prompt.finished_at) - func.julianday(Prompt.started_at)) * 86400.0
    return func.extract("epoch", Prompt.finished_at - Prompt.started_at)


# reading ----------------------------------------------------------------------------------------
def _counts(database, batch_ids: list[str]) -> dict[str, dict[str, int]]:
    if not batch_ids:
        return {}
    with database.reading() as session:
        found = session.execute(
            select(Prompt.batch_id, Prompt.state, func.count()).where(Prompt.batch_id.in_(batch_ids))
            .group_by(Prompt.batch_id, Prompt.state)
        ).all()
    counts: dict[str, dict[str, int]] = {batch_id: {} for batch_id in batch_ids}
    for batch_id, state, count in found:
        counts[batch_id][state] = count
    return counts


def batch_state(batch: Batch, counts: dict[str, int]) -> str:
    if batch.cancelled:
        return "cancelled"
    active = sum(counts.get(s.value, 0) for s in PromptState.active())
    pending = sum(counts.get(state, 0) for state in _PENDING)
    if batch.paused and (pending or active):
        return "paused"
    if active:
        return "running"
    if pending:
        return "running" if counts.get(PromptState.SUCCESS.value) or counts.get(PromptState.ERROR.value) else "queued"
    failed = counts.get(PromptState.ERROR.value, 0) + counts.get(PromptState.INTERRUPTED.value, 0)
    return "failed" if failed else "done"


def _summary(batch: Batch, counts: dict[str, int]) -> dict:
    finished = sum(counts.get(s.value, 0) for s in PromptState.finished()) + counts.get(PromptState.CANCELLED.value, 0)
    return {
        "id": batch.id, "name": batch.name, "team": batch.team, "state": batch_state(batch, counts),
        "priority": batch.priority, "cells": batch.cells, "counts": counts,
        "progress": round(finished / batch.cells, 4) if batch.cells else 1.0,
        "max_workers": batch.max_workers, "tags": batch.tags or [], "webhook": batch.webhook,
        "created_at": batch.created_at.isoformat(), "created_by": batch.created_by,
    }


def list_batches(database, principal: Principal, *, team: str | None = None, state: str | None = None,
                 name: str | None = None, before: str | None = None, limit: int = 50) -> dict:
    """Newest first, keyset-paged: `before` is the `next` of the previous page."""
    if state is not None and state not in STATES:
        raise invalid(f"state must be one of {', '.join(STATES)}, got {state!r}")
    limit = max(1, min(int(limit), MAX_PAGE))
    query = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc())
    scope = principal.scope
    if scope is not None:
        query = query.where(Batch.team == scope)
    elif team:
        query = query.where(Batch.team == team)
    if name:
        query = query.where(Batch.name.contains(name, autoescape=True))
    if before:
        with database.reading() as session:
            mark = session.get(Batch, before)
        if mark is not None:
            query = query.where(or_(Batch.created_at < mark.created_at,
                                    and_(Batch.created_at == mark.created_at, Batch.id < mark.id)))
    if state in ("paused", "cancelled"):
        query = query.where(Batch.paused if state == "paused" else Batch.cancelled)
    # Other states come from the cells' counts: read on until the page is full.
    page: list[dict] = []
    scan = query.limit(limit * 4 if state else limit + 1)
    last_seen = None
    while True:
        with database.reading() as session:
            batches = session.execute(scan).scalars().all()
        counts = _counts(database, [b.id for b in batches])
        for batch in batches:
            last_seen = batch
            summary = _summary(batch, counts[batch.id])
            if state is None or summary["state"] == state:
                if summary["state"] == "running":  # an ETA only where it moves (two reads each)
                    summary["eta_seconds"] = eta(database, batch, counts[batch.id])
                page.append(summary)
            if len(page) > limit:
                break
        if len(page) > limit or len(batches) < (limit * 4 if state else limit + 1):
            break
        scan = query.where(or_(Batch.created_at < last_seen.created_at,
                               and_(Batch.created_at == last_seen.created_at, Batch.id < last_seen.id))
                           ).limit(limit * 4)
    more = len(page) > limit
    page = page[:limit]
    return {"batches": page, "next": page[-1]["id"] if more else None}


def owned(database, principal: Principal, batch_id: str) -> Batch:
    """The batch, if `principal` may see it; else BatchError 404 (another team's is not found)."""
    with database.reading() as session:
        batch = session.get(Batch, batch_id)
    if batch is None or not principal.sees(batch.team):
        raise BatchError(404, errors.error("not_found", "Batch not found", batch_id))
    return batch


def detail(database, principal: Principal, batch_id: str) -> dict:
    batch = owned(database, principal, batch_id)
    counts = _counts(database, [batch.id])[batch.id]
    summary = _summary(batch, counts)
    summary["sweep"] = batch.sweep
    summary["eta_seconds"] = eta(database, batch, counts)
    summary["outputs"] = outputs(database, batch.id)
    with database.reading() as session:
        summary["workers_failed"] = [
            {"worker": row.worker, "failures": row.failures, "blocked": row.blocked}
            for row in session.execute(select(BatchBlock).where(BatchBlock.batch_id == batch.id)
                                       .order_by(BatchBlock.worker)).scalars()]
    summary["webhooks"] = webhooks.deliveries_of(database, batch.id)
    return summary


def unblock(farm, principal: Principal, batch_id: str, worker: str) -> dict:
    """Let `worker` take `batch_id`'s cells again (its failure count starts over)."""
    batch = owned(farm.database, principal, batch_id)
    with farm.database.write_connection() as connection:
        removed = connection.execute(delete(BatchBlock.__table__).where(
            BatchBlock.__table__.c.batch_id == batch.id, BatchBlock.__table__.c.worker == worker)).rowcount
        if not removed:
            raise BatchError(404, errors.error("not_found", "That worker has no failures on this batch", worker))
        audit.record(connection, principal, "batch.unblock", f"batch:{batch.id}", {"worker": worker,
                                                                                   "team": batch.team})
    farm.dispatch_soon()
    return detail(farm.database, principal, batch_id)


def eta(database, batch: Batch, counts: dict[str, int]) -> float | None:
    """Seconds until the batch is done: its remaining cells at the rate its workers showed on it
    (each worker's own measured seconds per cell, summed as rates over the workers running it now,
    or over all that ran it when none does)."""
    remaining = sum(counts.get(state, 0) for state in (*_PENDING, *[s.value for s in PromptState.active()]))
    if not remaining:
        return 0.0
    duration = duration_seconds(database)
    with database.reading() as session:
        per_worker = dict(session.execute(
            select(Prompt.worker, func.avg(duration)).where(
                Prompt.batch_id == batch.id, Prompt.state == PromptState.SUCCESS.value,
                Prompt.started_at.is_not(None), Prompt.worker.is_not(None)).group_by(Prompt.worker)
        ).all())
        running = set(session.scalars(select(Prompt.worker).where(
            Prompt.batch_id == batch.id, Prompt.state.in_([s.value for s in PromptState.active()]))))
    rates = [1.0 / float(seconds) for worker, seconds in per_worker.items()
             if seconds and (not running or worker in running)]
    if not rates:
        return None
    return round(remaining / sum(rates), 1)


def outputs(database, batch_id: str, limit: int = 1000) -> list[dict]:
    """The files the batch's finished cells wrote, in cell order (the first `limit` cells)."""
    with database.reading() as session:
        rows = session.execute(
            select(Prompt.cell_index, Prompt.prompt_id, Prompt.outputs, Prompt.cell_values)
            .where(Prompt.batch_id == batch_id, Prompt.state == PromptState.SUCCESS.value)
            .order_by(Prompt.cell_index).limit(limit)
        ).all()
    files = []
    for cell_index, prompt_id, produced, values in rows:
        for node_id, ui in (produced or {}).items():
            for kind in ("images", "gifs", "video", "audio"):
                for item in (ui or {}).get(kind, []) or []:
                    if isinstance(item, dict) and "filename" in item:
                        files.append({"cell": cell_index, "prompt_id": prompt_id, "node": node_id,
                                      "values": values or {}, **item})
    return files


def cells(database, principal: Principal, batch_id: str, after: int = -1, limit: int = 100) -> dict:
    """The batch's cells in index order, keyset-paged by index."""
    owned(database, principal, batch_id)
    limit = max(1, min(int(limit), MAX_PAGE))
    duration = duration_seconds(database)
    with database.reading() as session:
        rows = session.execute(
            select(Prompt.cell_index, Prompt.prompt_id, Prompt.state, Prompt.worker, Prompt.attempt,
                   Prompt.cell_values, duration.label("seconds"), Prompt.execution_error)
            .where(Prompt.batch_id == batch_id, Prompt.cell_index > after)
            .order_by(Prompt.cell_index).limit(limit + 1)
        ).all()
    page = rows[:limit]
    return {
        "cells": [{"index": row.cell_index, "prompt_id": row.prompt_id, "state": row.state, "worker": row.worker,
                   "attempts": row.attempt, "values": row.cell_values or {},
                   "seconds": round(float(row.seconds), 3) if row.seconds is not None else None,
                   "error": (row.execution_error or {}).get("exception_message") if row.execution_error else None}
                  for row in page],
        "next": page[-1].cell_index if len(rows) > limit else None,
    }


# actions ----------------------------------------------------------------------------------------
def act(farm, principal: Principal, batch_ids: list[str], action: str, priority: int | None = None,
        cells: list[int] | None = None) -> list[dict]:
    """`action` on each batch (all must be the principal's to see); their summaries after it.
    `cells`: for retry, only these cell indices (one batch)."""
    if action not in ACTIONS:
        raise BatchError(404, errors.error("not_found", "Unknown batch action", f"{action}: use {', '.join(ACTIONS)}"))
    if not batch_ids or not all(isinstance(i, str) for i in batch_ids):
        raise invalid("give the ids of the batches to act on")
    batches = [owned(farm.database, principal, batch_id) for batch_id in dict.fromkeys(batch_ids)]
    if cells is not None and (action != "retry" or len(batches) != 1 or not isinstance(cells, list)
                              or not all(isinstance(i, int) and not isinstance(i, bool) for i in cells)):
        raise invalid("cells (a list of cell indices) goes with retry on one batch")
    if action == "priority":
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise invalid(f"priority must be a whole number within 0-100, got {priority!r}")
        for team in {batch.team for batch in batches}:
            limit = team_row(farm.database, team).max_priority
            if priority > limit:
                principal.require("operator", f"priority {priority} (team {team} allows {limit})")
    with farm.database.write_connection() as connection:
        for batch in batches:
            _apply(connection, batch.id, action, priority, cells)
            audit.record(connection, principal, f"batch.{action}", f"batch:{batch.id}",
                         {"team": batch.team, **({"priority": priority} if action == "priority" else {}),
                          **({"cells": cells[:100]} if cells is not None else {})})
    if action == "cancel":
        for batch in batches:
            for prompt_id in _running_cells(farm.database, batch.id):
                queue_control.interrupt(farm, prompt_id)
    farm.dispatch_soon()
    farm.queue_changed()
    counts = _counts(farm.database, [batch.id for batch in batches])
    with farm.database.reading() as session:
        fresh = [session.get(Batch, batch.id) for batch in batches]
    return [_summary(batch, counts[batch.id]) for batch in fresh]


def _apply(connection, batch_id: str, action: str, priority: int | None, cells: list[int] | None = None) -> None:
    batches, cells_of = Batch.__table__, _prompts.c.batch_id == batch_id
    if action == "pause":
        connection.execute(update(batches).where(batches.c.id == batch_id).values(paused=True))
        connection.execute(update(_prompts).where(cells_of, _prompts.c.state == PromptState.QUEUED.value)
                           .values(state=PromptState.PAUSED.value))
    elif action == "resume":
        connection.execute(update(batches).where(batches.c.id == batch_id).values(paused=False))
        connection.execute(update(_prompts).where(cells_of, _prompts.c.state == PromptState.PAUSED.value)
                           .values(state=PromptState.QUEUED.value))
    elif action == "cancel":
        connection.execute(update(batches).where(batches.c.id == batch_id).values(cancelled=True, paused=False))
        connection.execute(update(_prompts).where(cells_of, _prompts.c.state.in_(_PENDING))
                           .values(state=PromptState.CANCELLED.value, finished_at=db_now()))
    elif action == "retry":
        paused = connection.execute(select(batches.c.paused).where(batches.c.id == batch_id)).scalar()
        connection.execute(update(batches).where(batches.c.id == batch_id).values(cancelled=False, notified_at=None))
        chosen = cells_of if cells is None else and_(cells_of, _prompts.c.cell_index.in_(cells))
        connection.execute(update(_prompts).where(chosen, _prompts.c.state.in_(_RETRYABLE)).values(
            state=PromptState.PAUSED.value if paused else PromptState.QUEUED.value, worker=None, attempt=0,
            dispatched_at=None, started_at=None, finished_at=None, outputs=None, messages=None,
            execution_error=None, lost_on=None, passed_at=None, retries=0))
    else:
        connection.execute(update(batches).where(batches.c.id == batch_id).values(priority=priority))
        connection.execute(update(_prompts).where(cells_of).values(priority=priority, queue_rank=rank_of(priority)))


def _running_cells(database, batch_id: str) -> list[str]:
    with database.reading() as session:
        return list(session.scalars(select(Prompt.prompt_id).where(
            Prompt.batch_id == batch_id, Prompt.state.in_([s.value for s in PromptState.active()]))))
