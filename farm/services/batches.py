"""Studio batches: many prompts (cells) from one workflow and a sweep, or from a list of workflows,
accepted together, followed together and acted on together.

A batch is accepted whole or not at all: every cell is validated before anything is stored, and
the cells are inserted in one transaction with consecutive queue numbers. Cells are ordinary
prompts (ComfyUI clients see them in /queue and /history) that carry their batch id, index and
sweep values. Validation is done per distinct swept value, not per cell: a cell is valid when
the base workflow is and each of its values is (an integer range is checked at its ends), so a
10,000-cell seed sweep costs a handful of validations. When a swept input changes which model
files a prompt needs (a checkpoint sweep), each cell is validated whole.

Pausing moves a batch's queued cells to `paused` (the dispatcher never sees them; running cells
finish); resuming puts them back at their place. Cancelling cancels queued and paused cells and
interrupts running ones. Retrying puts failed, interrupted and cancelled cells back in the queue
(their failure history starts over). Cells that fail for reasons not their own are retried by
themselves (farm.services.cell_retries); a worker blocked from a batch is listed on it and can be
let back (`unblock`).
"""

from __future__ import annotations

import dataclasses
import json
import uuid

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update

from farm.db.clock import db_now
from farm.db.models import Batch, BatchBlock, Counter, Prompt, PromptState, Team
from farm.graph import errors
from farm.graph.links import is_link
from farm.graph.validation import validate_prompt
from farm.queue.placement import tag_needs
from farm.services import audit, queue_control, webhooks
from farm.services.principal import Principal
from farm.services.submit import (DEFAULT_PRIORITY, SENSITIVE_EXTRA_DATA, over_queue_quota, rank_of,
                                 request_hash)
from farm.services.sweep import Sweep, SweepError, apply, parse_rows, parse_sweep

STATES = ("queued", "running", "paused", "done", "failed", "cancelled")
ACTIONS = ("pause", "resume", "cancel", "retry", "priority")
MAX_PAGE = 500

_prompts = Prompt.__table__
_counters = Counter.__table__
_RESERVE_NUMBERS = (
    update(_counters).where(_counters.c.name == "prompt_number")
    .values(value=_counters.c.value + bindparam("count")).returning(_counters.c.value)
)
_INSERT_CELL = insert(_prompts).values(created_at=db_now())
_PENDING = [PromptState.QUEUED.value, PromptState.PAUSED.value]
_RETRYABLE = [PromptState.ERROR.value, PromptState.INTERRUPTED.value, PromptState.CANCELLED.value]


class BatchError(Exception):
    """A batch request refused: HTTP status and the body in ComfyUI's error shape."""

    def __init__(self, status: int, error: dict, node_errors: dict | None = None):
        super().__init__(error.get("message"))
        self.status, self.error, self.node_errors = status, error, node_errors or {}

    def body(self) -> dict:
        return {"error": self.error, "node_errors": self.node_errors}


def _invalid(message: str, details: str = "", **extra) -> BatchError:
    return BatchError(400, errors.error("invalid_batch", message, details, extra or None))


@dataclasses.dataclass
class BatchRequest:
    """A POST /api/batches body, checked."""

    workflows: list[dict]
    sweep: Sweep
    name: str
    priority: int
    max_workers: int | None
    tags: list[str]
    webhook: str | None
    client_id: str | None
    extra_data: dict
    dry_run: bool


def parse_request(body, rows_text: str | None = None, rows_filename: str = "",
                  max_cells: int = 1_000_000) -> BatchRequest:
    if not isinstance(body, dict):
        raise _invalid("the batch must be a JSON object")
    if ("workflow" in body) == ("workflows" in body):
        raise _invalid("give one API-format workflow as 'workflow' (with a 'sweep' or 'rows'), or a list as "
                       "'workflows'")
    rows = body.get("rows")
    if rows_text is not None:
        if rows is not None:
            raise _invalid("give rows in the body or as a file, not both")
        try:
            rows = parse_rows(rows_text, rows_filename)
        except SweepError as error:
            raise _invalid(str(error)) from None
    try:
        if "workflows" in body:
            workflows = body["workflows"]
            if not isinstance(workflows, list) or not workflows:
                raise _invalid("workflows must be a non-empty list of API-format workflows")
            if body.get("sweep") or rows is not None:
                raise _invalid("a list of workflows takes no sweep or rows: each workflow is one cell")
            if len(workflows) > max_cells:
                raise _invalid(f"{len(workflows)} workflows is more than the {max_cells} cells a batch may hold "
                               "(FARM_MAX_BATCH_CELLS)")
            sweep = Sweep()
        else:
            workflows = [body["workflow"]]
            sweep = parse_sweep(body.get("sweep"), body.get("mode"), rows, max_cells)
    except SweepError as error:
        raise _invalid(str(error)) from None
    priority = body.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise _invalid(f"priority must be a whole number within 0-100, got {priority!r}")
    max_workers = body.get("max_workers")
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                    or max_workers < 1):
        raise _invalid(f"max_workers must be a whole number of at least 1, got {max_workers!r}")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        raise _invalid("tags must be a list of worker tags (farm worker --tags)")
    webhook = body.get("webhook")
    if webhook is not None and (not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))):
        raise _invalid(f"webhook must be an http(s) URL, got {webhook!r}")
    extra_data = body.get("extra_data", {})
    if not isinstance(extra_data, dict):
        raise _invalid("extra_data must be an object")
    name = body.get("name") or ""
    if not isinstance(name, str) or len(name) > 200:
        raise _invalid("name must be text of at most 200 characters")
    return BatchRequest(workflows, sweep, name, priority, max_workers, sorted(set(tags)), webhook,
                        str(body["client_id"]) if body.get("client_id") is not None else None,
                        {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_DATA},
                        bool(body.get("dry_run")))


@dataclasses.dataclass
class Cell:
    values: dict
    prompt: dict
    outputs: list[str]
    node_errors: dict
    needs: list[str]


def _cell_error(index: int, values: dict, validation) -> BatchError:
    shown = json.dumps(values, sort_keys=True)
    return BatchError(400, errors.error(
        "invalid_batch_cell", f"Cell {index} ({shown}) is invalid: {validation.error['message']}",
        validation.error.get("details", ""), {"cell": index, "values": values, "error": validation.error},
    ), validation.node_errors)


def _check_keys(workflow: dict, sweep: Sweep, registry, env) -> None:
    for key in sweep.keys:
        node_id, input_name = key.split(".", 1)
        node = workflow.get(node_id)
        if not isinstance(node, dict) or node.get("class_type") not in registry:
            raise _invalid(f"sweep {key!r}: the workflow has no node {node_id!r}", key=key)
        schema = registry[node["class_type"]].input_types(env)
        known = {**schema.get("required", {}), **schema.get("optional", {})}
        if input_name not in known:
            raise _invalid(f"sweep {key!r}: node {node_id} ({node['class_type']}) has no input {input_name!r}",
                           f"its inputs: {', '.join(sorted(known))}", key=key)
        if is_link(node.get("inputs", {}).get(input_name)):
            raise _invalid(f"sweep {key!r}: that input is linked to another node's output; sweep a constant input",
                           key=key)


def expand(request: BatchRequest, registry, env):
    """Every cell of the batch, validated; BatchError names the first invalid one. A generator:
    the caller stores cells as they come."""
    if len(request.workflows) > 1 or not request.sweep.keys:
        for index, workflow in enumerate(request.workflows):
            validation = validate_prompt(workflow, registry, env)
            if not validation.ok:
                raise _cell_error(index, {}, validation)
            yield Cell({} if len(request.workflows) == 1 else {"workflow": index}, validation.prompt,
                       validation.outputs, validation.node_errors, validation.needs)
        return
    base_workflow, sweep = request.workflows[0], request.sweep
    if not isinstance(base_workflow, dict):
        validation = validate_prompt(base_workflow, registry, env)
        raise _cell_error(0, {}, validation)
    _check_keys(base_workflow, sweep, registry, env)
    first = next(sweep.cells())
    base = validate_prompt(apply(base_workflow, first), registry, env)
    if not base.ok:
        raise _cell_error(0, first, base)
    # Each distinct value, validated in the first cell's graph: its coerced form, and whether it
    # changes the model files the prompt needs.
    coerced: dict[str, dict[str, object]] = {}
    per_cell = False
    for key, values in sweep.distinct_values().items():
        node_id, input_name = key.split(".", 1)
        for value in values:
            validation = validate_prompt(apply(base_workflow, {**first, key: value}), registry, env)
            if not validation.ok:
                index, cell_values = next((i, cell) for i, cell in enumerate(sweep.cells())
                                          if json.dumps(cell.get(key), sort_keys=True)
                                          == json.dumps(value, sort_keys=True))
                raise _cell_error(index, cell_values, validation)
            coerced.setdefault(key, {})[json.dumps(value, sort_keys=True)] = \
                validation.prompt[node_id]["inputs"][input_name]
            per_cell = per_cell or validation.needs != base.needs
    for index, values in enumerate(sweep.cells()):
        if per_cell:
            validation = validate_prompt(apply(base_workflow, values), registry, env)
            if not validation.ok:
                raise _cell_error(index, values, validation)
            yield Cell(values, validation.prompt, validation.outputs, validation.node_errors, validation.needs)
            continue
        settled = {key: coerced[key].get(json.dumps(value, sort_keys=True), value) for key, value in values.items()}
        yield Cell(values, apply(base.prompt, settled), base.outputs, base.node_errors, base.needs)


def _team_row(database, team: str) -> Team:
    with database.reading() as session:
        row = session.get(Team, team)
    if row is None:
        raise BatchError(403, errors.error("forbidden", f"team {team!r} does not exist any more"))
    return row


def create(farm, body, principal: Principal, rows_text: str | None = None, rows_filename: str = "") -> dict:
    """Validate and store a batch for `principal`'s team; the answer body (dry runs store nothing)."""
    settings = farm.settings
    request = parse_request(body, rows_text, rows_filename, settings.max_batch_cells)
    team = _team_row(farm.database, principal.team)
    if request.priority > team.max_priority:
        principal.require("operator", f"priority {request.priority} (team {team.name} allows {team.max_priority})")
    env = farm.node_env_for(principal.team)
    cells = expand(request, farm.registry, env)
    count = request.sweep.count() if len(request.workflows) == 1 else len(request.workflows)
    if request.dry_run:
        for _ in cells:
            pass  # validates every cell
        return {"dry_run": True, "cells": count, "estimate": estimate(farm.database, principal.team, count)}
    over = over_queue_quota(farm, principal.team, count)
    if over is not None:
        raise BatchError(over.status, over.body["error"])
    batch_id = str(uuid.uuid4())
    rows = []
    for index, cell in enumerate(cells):
        prompt_id = str(uuid.uuid4())
        extra = {**request.extra_data, "farm_batch": {"id": batch_id, "cell": index, "values": cell.values}}
        if request.client_id is not None:
            extra["client_id"] = request.client_id
        rows.append({
            "prompt_id": prompt_id, "front": False, "client_id": request.client_id, "prompt": cell.prompt,
            "extra_data": extra, "outputs_to_execute": cell.outputs, "partial_execution_targets": None,
            "request_hash": request_hash({"batch": batch_id, "cell": index}), "node_errors": cell.node_errors,
            "state": PromptState.QUEUED.value, "attempt": 0, "team": principal.team,
            "needs_id": farm.needs_ids.get(farm.database, sorted([*cell.needs, *tag_needs(request.tags)])),
            "batch_id": batch_id, "cell_index": index,
            "cell_values": cell.values, "priority": request.priority, "queue_rank": rank_of(request.priority),
            "tags": request.tags or None,
        })
    with farm.database.write_connection() as connection:
        last = connection.execute(_RESERVE_NUMBERS, {"count": len(rows)}).scalar_one()
        for offset, row in enumerate(rows):
            row["number"] = last - len(rows) + offset
        connection.execute(insert(Batch.__table__).values(
            id=batch_id, team=principal.team, name=request.name, priority=request.priority, paused=False,
            cancelled=False, max_workers=request.max_workers, tags=request.tags, webhook=request.webhook,
            sweep=request.sweep.to_json() if len(request.workflows) == 1 else {"workflows": len(rows)},
            cells=len(rows), created_at=db_now(), created_by=principal.actor))
        connection.execute(_INSERT_CELL, rows)
    farm.dispatch_soon()
    farm.queue_changed()
    return {"batch_id": batch_id, "cells": len(rows), "prompt_ids": [row["prompt_id"] for row in rows[:1000]],
            "number": [rows[0]["number"], rows[-1]["number"]]}


def estimate(database, team: str, cells: int) -> dict:
    """What a batch of `cells` would take, from this team's last hour of finished prompts."""
    seconds = _seconds_per_prompt(database, Prompt.team == team)
    return {"seconds_per_prompt": seconds, "prompt_seconds": round(seconds * cells, 1) if seconds else None}


def _seconds_per_prompt(database, condition) -> float | None:
    duration = _duration_seconds(database)
    with database.reading() as session:
        value = session.scalar(
            select(func.avg(duration)).where(condition, Prompt.state == PromptState.SUCCESS.value,
                                              Prompt.started_at.is_not(None))
        )
    return round(float(value), 3) if value is not None else None


def _duration_seconds(database):
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
        raise _invalid(f"state must be one of {', '.join(STATES)}, got {state!r}")
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
    duration = _duration_seconds(database)
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
    duration = _duration_seconds(database)
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
        raise _invalid("give the ids of the batches to act on")
    batches = [owned(farm.database, principal, batch_id) for batch_id in dict.fromkeys(batch_ids)]
    if cells is not None and (action != "retry" or len(batches) != 1 or not isinstance(cells, list)
                              or not all(isinstance(i, int) and not isinstance(i, bool) for i in cells)):
        raise _invalid("cells (a list of cell indices) goes with retry on one batch")
    if action == "priority":
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise _invalid(f"priority must be a whole number within 0-100, got {priority!r}")
        for team in {batch.team for batch in batches}:
            limit = _team_row(farm.database, team).max_priority
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
