"""The routes ComfyUI's editor calls besides the API proper: locales, custom nodes' templates and
subgraphs, and the model library (`/experiment/models`).

The farm loads no custom nodes' web folders, so their locales, templates and subgraphs are empty;
the model library lists what the live workers report they can load (see farm.models).
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from farm import models
from web.context import farm
from web.errors import error_response

blueprint = Blueprint("editor", __name__)


@blueprint.get("/i18n")
def locales():
    return jsonify({})


@blueprint.get("/workflow_templates")
def workflow_templates():
    return jsonify({})


@blueprint.get("/global_subgraphs")
def global_subgraphs():
    return jsonify({})


@blueprint.get("/global_subgraphs/<path:subgraph>")
def global_subgraph(subgraph: str):
    return error_response(404, "not_found", "Subgraph not found", subgraph)


@blueprint.get("/node_replacements")
def node_replacements():
    return jsonify({})


@blueprint.get("/experiment/models")
def model_folders():
    """Each model folder type, with where the farm reads it (each worker's own models folder)."""
    root = farm().settings.models_dir
    return jsonify([{"name": folder, "folders": [str(root / folder)]}
                    for folder in models.folder_types() if folder not in ("configs", "custom_nodes")])


@blueprint.get("/experiment/models/<folder>")
def model_folder(folder: str):
    if not models.is_folder_type(folder):
        return error_response(404, "not_found", "Unknown model folder", folder)
    return jsonify([{"name": name, "pathIndex": 0} for name in farm().node_env.model_files(folder)])


@blueprint.get("/internal/folder_paths")
def folder_paths():
    """Each model folder type and where it is read (the workers' models folder)."""
    root = farm().settings.models_dir
    return jsonify({folder: [str(root / folder)] for folder in models.folder_types()})


@blueprint.get("/internal/files/<kind>")
def top_level_files(kind: str):
    """The file names at the top of the caller's input, output or temp folder (LoadImageOutput's list)."""
    from farm.storage import KINDS

    from web.auth import principal

    if kind not in KINDS:
        return error_response(400, "invalid_type", "Invalid file type", f"type must be one of {list(KINDS)}")
    return jsonify(farm().storage.for_team(principal().team).list_images(kind))


@blueprint.get("/internal/logs")
def logs():
    # The farm's logs are each process's own (journald, the container's log): none to hand out here.
    return jsonify("")


@blueprint.get("/internal/logs/raw")
def raw_logs():
    return jsonify({"entries": [], "size": {"cols": 80, "rows": 24}})


@blueprint.patch("/internal/logs/subscribe")
def subscribe_logs():
    return jsonify({})
