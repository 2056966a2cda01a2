"""GET /object_info and /object_info/<class>: the node schemas validation uses, in ComfyUI's V1 form."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from web.auth import principal
from web.context import farm

log = logging.getLogger(__name__)
blueprint = Blueprint("nodes", __name__)


def _entries(class_types) -> dict:
    context = farm()
    env = context.node_env_for(principal().team)  # LoadImage lists the team's own input files
    entries = {}
    for class_type in class_types:
        try:
            entries[class_type] = context.registry[class_type].info(env)
        except Exception:  # noqa: BLE001 - one broken schema must not hide the other nodes (as in ComfyUI)
            log.exception("object_info for %s failed; the node is left out", class_type)
    return entries


@blueprint.get("/object_info")
def object_info():
    return jsonify(_entries(farm().registry))


@blueprint.get("/object_info/<path:node_class>")
def object_info_one(node_class: str):
    return jsonify(_entries([node_class] if node_class in farm().registry else []))
