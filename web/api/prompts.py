"""POST/GET /prompt and GET /queue."""

from __future__ import annotations

from flask import Blueprint, jsonify

from farm.services import history
from farm.services.submit import submit_prompt
from web.auth import principal
from web.context import farm, json_body

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
    return jsonify(history.queue(farm().database, farm().settings, team=principal().scope))
