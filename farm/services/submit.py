"""Accepting a prompt: parse the POST /prompt body, validate, commit, then dispatch.

Accepted means committed: the row is in the database before the answer is sent. A client may
retry a submission with the same prompt_id and body and gets the first answer back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import uuid

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from farm.db import prompt_counts
from farm.db.models import ModelNeeds, Prompt, PromptState
from farm.db.upsert import insert_for
from farm.graph import errors
from farm.graph.coalesce import coalesce_key
from farm.graph.storable import body_refusal
from farm.graph.validation import validate_prompt
from farm.services.principal import LOCAL, Principal

log = logging.getLogger(__name__)

# Credentials for API nodes: never stored (ComfyUI strips them from history too).
SENSITIVE_EXTRA_DATA = ("auth_token_comfy_org", "api_key_comfy_org")

# Built once: submission is the hot path, and building statements costs more than running them.
_NEEDS_ID = select(ModelNeeds.__table__.c.id).where(ModelNeeds.__table__.c.key == bindparam("key"))


class ModelNeedsIds:
    """The model_needs row of each set of model files a prompt loads, remembered per process
    (rows never change), created on first use by whichever process meets the set first."""

    def __init__(self):
        self._ids: dict[str, int] = {}

    def get(self, database, needs: list[str]) -> int | None:
        if not needs:
            return None
        key = hashlib.sha256(json.dumps(needs).encode()).hexdigest()
        found = self._ids.get(key)
        if found is None:
            # Its own transaction, committed before any prompt refers to it.
            with database.write_connection() as connection:
                connection.execute(insert_for(connection, ModelNeeds.__table__).values(key=key, files=needs)
                                   .on_conflict_do_nothing(index_elements=["key"]))
                found = connection.execute(_NEEDS_ID, {"key": key}).scalar_one()
            self._ids[key] = found
        return found


@dataclasses.dataclass(frozen=True)
class SubmitAnswer:
    status: int
    body: dict


def _refuse(error: dict, node_errors: dict | None = None) -> SubmitAnswer:
    return SubmitAnswer(400, {"error": error, "node_errors": node_errors or {}})


def _canonical_uuid(value) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def submit_prompt(farm, body, principal: Principal = LOCAL) -> SubmitAnswer:
    """Validate and enqueue one POST /prompt body for `principal`'s team; `farm` is the web's
    FarmContext. `front` needs the operator role (it passes every other team's work)."""
    if not isinstance(body, dict) or "prompt" not in body:
        return _refuse(errors.no_prompt())
    refusal = body_refusal(body)  # NaN, Infinity, NUL, nesting past 100: nothing below may meet them
    if refusal is not None:
        return _refuse(*refusal)
    if body.get("front") and "number" not in body:
        principal.require("operator", "front (running before everything queued)")

    prompt_id = body.get("prompt_id")
    # Only a client that names its prompt_id can retry a submission: its body's hash tells a retry
    # from a conflict. Without one there is nothing to compare, and hashing is skipped.
    body_hash = ""
    if prompt_id is None:
        prompt_id = str(uuid.uuid4())
    elif not _canonical_uuid(prompt_id):
        return _refuse(errors.invalid_prompt_id(f"prompt_id {prompt_id!r} is not a lowercase hyphenated UUID"))
    else:
        body_hash = request_hash(body)
        earlier = _earlier_answer(farm.database, prompt_id, body_hash, principal)  # a retry?
        if earlier is not None:
            return earlier

    extra_data = body.get("extra_data", {})
    if not isinstance(extra_data, dict):
        return _refuse(errors.invalid_prompt("extra_data must be an object"))
    extra_data = {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_DATA}
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    if len(str(body.get("client_id", ""))) > 255:  # the column's size: PostgreSQL would refuse the row
        return _refuse(errors.invalid_prompt("client_id must be at most 255 characters"))
    targets = body.get("partial_execution_targets")
    if targets is not None and not isinstance(targets, list):
        return _refuse(errors.invalid_prompt("partial_execution_targets must be a list of node ids"))
    given_number = None
    if "number" in body:
        try:
            given_number = float(body["number"])  # 10**400 overflows; "nan" and "1e999" parse
        except (TypeError, ValueError, OverflowError):
            given_number = math.nan
        if not math.isfinite(given_number):
            return _refuse(errors.invalid_prompt(f"number must be a finite number, got {str(body['number'])[:100]}"))

    validation = validate_prompt(body["prompt"], farm.registry, farm.node_env_for(principal.team), targets)
    if not validation.ok:
        return _refuse(validation.error, validation.node_errors)
    over = over_queue_quota(farm, principal.team, 1)
    if over is not None:
        return over

    front = bool(body.get("front")) and given_number is None
    row = dict(
        prompt_id=prompt_id,
        front=front,
        client_id=str(body["client_id"]) if body.get("client_id") is not None else None,
        prompt=validation.prompt,
        extra_data=extra_data,
        outputs_to_execute=validation.outputs,
        partial_execution_targets=targets,
        request_hash=body_hash,
        node_errors=validation.node_errors,
        state=PromptState.QUEUED.value,
        attempt=0,
        team=principal.team,
        queue_rank=0 if front else rank_of(DEFAULT_PRIORITY),
    )
    row["needs_id"] = farm.needs_ids.get(farm.database, validation.needs)
    row["coalesce_key"] = coalesce_key(validation.prompt, validation.outputs)
    row["workflow_id"] = workflow_id_of(extra_data)
    if given_number is not None:
        row["number"] = given_number
    try:
        farm.submissions.insert(row, number=given_number is None, front=front)
    except IntegrityError:
        # The same prompt_id committed concurrently: answer as a retry would be answered.
        earlier = _earlier_answer(farm.database, prompt_id, body_hash, principal)
        if earlier is None:
            raise
        return earlier

    farm.dispatch_soon()
    farm.queue_changed()
    return SubmitAnswer(200, {"prompt_id": prompt_id, "number": number_json(row["number"]),
                              "node_errors": validation.node_errors})


DEFAULT_PRIORITY = 50
_PENDING = [PromptState.QUEUED.value, PromptState.PAUSED.value]


def over_queue_quota(farm, team: str, adding: int) -> SubmitAnswer | None:
    """A 429 when `adding` more pending prompts would take `team` past its max_queued; else None.
    (Checked at submission: submissions racing each other may pass it by a few.)"""
    teams = getattr(farm, "teams", None)
    limit = teams.limits(team).max_queued if teams is not None else None
    if limit is None:
        return None
    with farm.database.engine.connect() as connection:
        pending = prompt_counts.count(connection, _PENDING, team)
    if pending + adding <= limit:
        return None
    return SubmitAnswer(429, {"error": errors.error(
        "queue_quota_exceeded", f"Team {team} may have at most {limit} prompts waiting",
        f"{pending} are waiting; {adding} more would pass the team's max_queued",
        {"team": team, "max_queued": limit, "pending": pending}), "node_errors": {}})


def rank_of(priority: int) -> int:
    """The queue_rank of a prompt of this priority (0-100) that is not `front` (front is 0)."""
    return 101 - priority


def workflow_id_of(extra_data: dict) -> str | None:
    """The editor's workflow id (extra_pnginfo.workflow.id) when it is a string, cut to 64 characters."""
    found = extra_data
    for key in ("extra_pnginfo", "workflow", "id"):
        found = found.get(key) if isinstance(found, dict) else None
    return found[:64] if isinstance(found, str) else None


def number_json(number: float) -> float | int:
    """Numbers are stored as floats; whole ones are shown as integers, as ComfyUI's counter gives."""
    return int(number) if float(number).is_integer() else number


def _earlier_answer(database, prompt_id: str, body_hash: str, principal: Principal) -> SubmitAnswer | None:
    with database.reading() as session:
        row = session.execute(
            select(Prompt.request_hash, Prompt.number, Prompt.node_errors, Prompt.front, Prompt.team)
            .where(Prompt.prompt_id == prompt_id)
        ).one_or_none()
    if row is None:
        return None
    if row.request_hash != body_hash or not principal.sees(row.team):
        # (Another team's id answers as any conflict does: nothing about that prompt is told.)
        return _refuse(errors.prompt_id_conflict(prompt_id))
    return SubmitAnswer(200, {"prompt_id": prompt_id, "number": number_json(row.number),
                              "node_errors": row.node_errors})
