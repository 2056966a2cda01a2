"""POST /queue, /interrupt, /history and /free: changing the queue, the history and the workers."""

from __future__ import annotations

from flask import Blueprint

from farm.services import audit, queue_control
from web.auth import principal
from web.context import BadJSON, farm, json_body
from web.errors import error_response

blueprint = Blueprint("control", __name__)


def _id_list(body: dict, key: str):
    """`delete` lists, as ComfyUI reads them: absent means nothing to delete."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list of prompt ids")
    return [str(item) for item in value]


def _object_body() -> dict:
    body = json_body()
    if not isinstance(body, dict):
        raise BadJSON("the request body must be a JSON object")
    return body


def _clear_or_delete(what: str, clear, delete):
    """POST /queue and POST /history: {"clear": true} and/or {"delete": [ids]}, empty 200. What was
    changed is recorded in the audit log (a team's prompts are every member's work)."""
    body = _object_body()
    try:
        to_delete = _id_list(body, "delete")
    except ValueError as exception:
        return error_response(400, "invalid_request", f"Invalid {what} request", str(exception))
    database, who = farm().database, principal()
    if body.get("clear"):
        changed = clear(database, team=who.scope)
        if changed:
            audit.record_alone(database, who, f"{what}.clear", f"team:{who.scope or 'all'}", {"count": _count(changed)})
    if to_delete:
        changed = delete(database, to_delete, team=who.scope)
        if changed:
            audit.record_alone(database, who, f"{what}.delete", f"team:{who.scope or 'all'}",
                               {"prompt_ids": to_delete[:100], "count": _count(changed)})
    return "", 200


def _count(changed) -> int:
    return changed if isinstance(changed, int) else len(changed)


@blueprint.post("/queue")
def post_queue():
    answer = _clear_or_delete("queue", queue_control.cancel_pending, queue_control.cancel_pending)
    farm().queue_changed()  # ComfyUI broadcasts status after every clear or delete
    return answer


@blueprint.post("/interrupt")
def post_interrupt():
    try:
        body = json_body(default={})
    except BadJSON:
        body = {}  # ComfyUI treats a missing or broken body as "interrupt everything"
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    who = principal()
    interrupted = queue_control.interrupt(farm(), str(prompt_id) if prompt_id else None, team=who.scope)
    if interrupted:
        audit.record_alone(farm().database, who, "prompt.interrupt", f"team:{who.scope or 'all'}",
                           {"prompt_ids": interrupted[:100]})
    return "", 200


@blueprint.post("/history")
def post_history():
    return _clear_or_delete("history", queue_control.delete_history, queue_control.delete_history)


@blueprint.post("/free")
def post_free():
    principal().require("admin", "/free (it unloads models on every worker)")
    body = _object_body()
    unload_models, free_memory = bool(body.get("unload_models")), bool(body.get("free_memory"))
    context = farm()
    if (unload_models or free_memory) and context.control is not None:
        context.control.free(unload_models, free_memory)
    return "", 200
