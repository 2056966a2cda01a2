"""POST/GET /prompt and GET /queue."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from farm.services import history
from farm.services.submit import submit_prompt
from web.auth import principal
from web.context import farm, json_body
from web.errors import error_response
from web.numbers import whole

blueprint = Blueprint("prompts", __name__)


@blueprint.post("/prompt")
def post_prompt():
    answer = submit_prompt(farm(), json_body(), principal())
    return jsonify(answer.body), answer.status


@blueprint.get("/prompt")
def get_prompt():
    return jsonify({"exec_info": {"queue_remaining": history.queue_remaining(farm().database)}})


@blueprint.get("/queue")
def get_queue():
    """ComfyUI's /queue, with the pending list paged (`limit`, default 200, at most 10,000;
    `offset`): a farm's queue may hold 100,000 prompts. GET /prompt counts them all."""
    try:
        limit = _whole(request.args.get("limit"))
        offset = _whole(request.args.get("offset")) or 0
    except ValueError:
        return error_response(400, "invalid_query", "limit and offset must be whole numbers, 0 or more",
                              request.query_string.decode(errors="replace"))
    return jsonify(history.queue(farm().database, farm().settings, team=principal().scope, limit=limit, offset=offset))


def _whole(text: str | None) -> int | None:
    value = whole(text)
    if value is not None and value < 0:
        raise ValueError(text)
    return value
