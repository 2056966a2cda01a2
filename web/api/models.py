"""GET /models, /models/<folder>, /embeddings and /extensions: what the frontend lists in its menus.

Model files are those the live workers report they can load (the web host may not even mount
the models folder); with no live worker, the web's own models folder.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from farm import models
from web.context import farm
from web.errors import error_response

blueprint = Blueprint("models", __name__)


@blueprint.get("/models")
def folder_types():
    return jsonify(models.folder_types())


@blueprint.get("/models/<folder>")
def model_files(folder: str):
    if not models.is_folder_type(folder):
        return error_response(404, "not_found", "Unknown model folder", folder)
    return jsonify(farm().node_env.model_files(folder))


@blueprint.get("/embeddings")
def embeddings():
    return jsonify(models.strip_extensions(farm().node_env.model_files("embeddings")))


@blueprint.get("/extensions")
def extensions():
    """The editor's own extension scripts when it is installed (ComfyUI lists its web root's);
    the farm loads no custom nodes' web folders."""
    from web.frontend import core_extensions

    return jsonify(core_extensions())
