"""Accepting a batch: parse the request, expand and validate every cell, store them in one go.

A batch is accepted whole or not at all: every cell is validated before anything is stored, and
the cells are inserted in one transaction with consecutive queue numbers. Validation is done per
distinct swept value, not per cell: a cell is valid when the base workflow is and each of its
values is (an integer range is checked at its ends), so a 10,000-cell seed sweep costs a handful
of validations. When a swept input changes which model files a prompt needs (a checkpoint
sweep), each cell is validated whole.
"""

from __future__ import annotations

import dataclasses
import json
import uuid

from sqlalchemy import insert

from farm.db.clock import db_now
from farm.db import numbers
from farm.db.models import Batch, Prompt, PromptState
from farm.graph import errors
from farm.graph.coalesce import coalesce_key, only_per_sample
from farm.graph.links import is_link
from farm.graph.validation import validate_prompt
from farm.queue.placement import tag_needs
from farm.services.batches import BatchError, invalid, seconds_per_prompt, team_row
from farm.graph.storable import first_problem
from farm.services.principal import Principal
from farm.services.submit import (
    DEFAULT_PRIORITY,
    SENSITIVE_EXTRA_DATA,
    over_queue_quota,
    rank_of,
    request_hash,
    workflow_id_of,
)
from farm.services.sweep import Sweep, SweepError, apply, parse_rows, parse_sweep

_prompts = Prompt.__table__
_INSERT_CELL = insert(_prompts).values(created_at=db_now())


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
        raise invalid("the batch must be a JSON object")
    problem = first_problem(body)  # NaN, NUL, too deep: nothing the database could store
    if problem is not None:
        raise invalid(f"{problem.where()}: {problem.reason}")
    if ("workflow" in body) == ("workflows" in body):
        raise invalid("give one API-format workflow as 'workflow' (with a 'sweep' or 'rows'), or a list as "
                       "'workflows'")
    rows = body.get("rows")
    if rows_text is not None:
        if rows is not None:
            raise invalid("give rows in the body or as a file, not both")
        try:
            rows = parse_rows(rows_text, rows_filename)
        except SweepError as error:
            raise invalid(str(error)) from None
        problem = first_problem(rows)
        if problem is not None:
            raise invalid(f"rows{problem.where() if problem.path else ''}: {problem.reason}")
    try:
        if "workflows" in body:
            workflows = body["workflows"]
            if not isinstance(workflows, list) or not workflows:
                raise invalid("workflows must be a non-empty list of API-format workflows")
            if body.get("sweep") or rows is not None:
                raise invalid("a list of workflows takes no sweep or rows: each workflow is one cell")
            if len(workflows) > max_cells:
                raise invalid(f"{len(workflows)} workflows is more than the {max_cells} cells a batch may hold "
                               "(FARM_MAX_BATCH_CELLS)")
            sweep = Sweep()
        else:
            workflows = [body["workflow"]]
            sweep = parse_sweep(body.get("sweep"), body.get("mode"), rows, max_cells)
    except SweepError as error:
        raise invalid(str(error)) from None
    priority = body.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise invalid(f"priority must be a whole number within 0-100, got {priority!r}")
    max_workers = body.get("max_workers")
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                    or max_workers < 1):
        raise invalid(f"max_workers must be a whole number of at least 1, got {max_workers!r}")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        raise invalid("tags must be a list of worker tags (farm worker --tags)")
    webhook = body.get("webhook")
    if webhook is not None and (not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))):
        raise invalid(f"webhook must be an http(s) URL, got {webhook!r}")
    extra_data = body.get("extra_data", {})
    if not isinstance(extra_data, dict):
        raise invalid("extra_data must be an object")
    name = body.get("name") or ""
    if not isinstance(name, str) or len(name) > 200:
        raise invalid("name must be text of at most 200 characters")
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
            raise invalid(f"sweep {key!r}: the workflow has no node {node_id!r}", key=key)
        schema = registry[node["class_type"]].input_types(env)
        known = {**schema.get("required", {}), **schema.get("optional", {})}
        if input_name not in known:
            raise invalid(f"sweep {key!r}: node {node_id} ({node['class_type']}) has no input {input_name!r}",
                           f"its inputs: {', '.join(sorted(known))}", key=key)
        if is_link(node.get("inputs", {}).get(input_name)):
            raise invalid(f"sweep {key!r}: that input is linked to another node's output; sweep a constant input",
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




def create(farm, body, principal: Principal, rows_text: str | None = None, rows_filename: str = "") -> dict:
    """Validate and store a batch for `principal`'s team; the answer body (dry runs store nothing)."""
    settings = farm.settings
    request = parse_request(body, rows_text, rows_filename, settings.max_batch_cells)
    team = team_row(farm.database, principal.team)
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
    shared_key = None  # a sweep of seeds or texts only: every cell has the first cell's key
    for index, cell in enumerate(cells):
        if shared_key is not None:
            key = shared_key
        else:
            key = coalesce_key(cell.prompt, cell.outputs)
            if key is not None and only_per_sample(cell.prompt, cell.values):
                shared_key = key
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
            "tags": request.tags or None, "coalesce_key": key, "workflow_id": workflow_id_of(extra),
        })
    with farm.database.write_connection() as connection:
        for row, number in zip(rows, numbers.take(connection, len(rows))):
            row["number"] = number
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
    seconds = seconds_per_prompt(database, Prompt.team == team)
    return {"seconds_per_prompt": seconds, "prompt_seconds": round(seconds * cells, 1) if seconds else None}
