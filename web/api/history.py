"""GET /history and GET /history/<prompt_id>."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from farm.services import history
from web.auth import principal
from web.context import farm
from web.errors import error_response
from web.numbers import whole

blueprint = Blueprint("history", __name__)


def _int_arg(name: str):
    return whole(request.args.get(name))  # past 2**63: a 400, not the database's overflow


@blueprint.get("/history")
def get_history():
    try:
        max_items, offset = _int_arg("max_items"), _int_arg("offset")
    except ValueError:
        return error_response(400, "invalid_query", "max_items and offset must be integers",
                              request.query_string.decode(errors="replace"))
    context = farm()
    return jsonify(history.history_page(context.database, max_items, offset, context.settings.history_max_items,
                                        team=principal().scope))


@blueprint.get("/history/<path:prompt_id>")
def get_history_entry(prompt_id: str):
    return jsonify(history.history_one(farm().database, prompt_id, team=principal().scope))
