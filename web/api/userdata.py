"""ComfyUI's user routes: /users, /userdata, /v2/userdata and /settings, one user folder per team.

Differences from ComfyUI, on purpose:
- The folder belongs to the caller's team (its API key or dashboard session); `Comfy-User` is
  ignored, as the farm's users are its keys. `GET /users` always reports one migrated user.
- A folder with no files lists as `[]` where ComfyUI answers 404 (folders exist only as the
  prefixes of files here); a missing `user.css` is an empty stylesheet, so the editor's page loads
  without a failed request.
- Errors come in the error shape; a stored file is served as JSON, CSS or a download, never as
  another type the browser would render.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify, request

from farm.services import userdata
from web.auth import principal
from web.context import farm
from web.errors import error_response

blueprint = Blueprint("userdata", __name__)

ERROR_TYPES = {400: "invalid_path", 403: "forbidden", 404: "not_found", 409: "conflict"}
SERVED_TYPES = {".json": "application/json", ".css": "text/css"}


@blueprint.errorhandler(userdata.UserDataError)
def refused(failure: userdata.UserDataError):
    return error_response(failure.status, ERROR_TYPES.get(failure.status, "invalid_request"), failure.message)


def _team() -> str:
    return principal().team


def _flag(name: str, default: bool = False) -> bool:
    value = request.args.get(name)
    return default if value is None else value.lower() == "true"


@blueprint.get("/users")
def users():
    return jsonify({"storage": "server", "migrated": True})


@blueprint.post("/users")
def create_user():
    return error_response(400, "not_supported", "The farm's users are its API keys",
                          "create a key with `farm keys create` (or POST /api/teams/<team>/keys as an admin)")


@blueprint.get("/userdata")
def list_files():
    folder = request.args.get("dir")
    if folder is None:
        return error_response(400, "invalid_request", "Directory not provided", "the dir parameter is required")
    found = userdata.listing(farm().database, _team(), folder, recurse=_flag("recurse"))
    if _flag("full_info"):
        return jsonify([info.as_json() for info in found])
    if _flag("split"):
        return jsonify([[info.path, *info.path.split("/")] for info in found])
    return jsonify([info.path for info in found])


@blueprint.get("/v2/userdata")
def list_files_v2():
    return jsonify(userdata.listing_v2(farm().database, _team(), request.args.get("path", "")))


@blueprint.get("/userdata/<path:file>")
def read_file(file: str):
    content = userdata.read(farm().database, _team(), file)
    suffix = "." + file.rsplit(".", 1)[-1].lower() if "." in file else ""
    if content is None:
        if file == "user.css":
            return Response("", mimetype="text/css")
        return error_response(404, "not_found", "File not found", file)
    mimetype = SERVED_TYPES.get(suffix, "application/octet-stream")
    response = Response(content, mimetype=mimetype)
    response.headers["X-Content-Type-Options"] = "nosniff"
    if suffix not in SERVED_TYPES:
        response.headers["Content-Disposition"] = "attachment"
    return response


@blueprint.post("/userdata/<path:file>")
def write_file(file: str):
    info = userdata.write(farm().database, _team(), file, request.get_data(), overwrite=_flag("overwrite", True))
    return jsonify(info.as_json() if _flag("full_info") else info.path)


@blueprint.delete("/userdata/<path:file>")
def delete_file(file: str):
    if not userdata.remove(farm().database, _team(), file):
        return error_response(404, "not_found", "File not found", file)
    return Response(status=204)


@blueprint.post("/userdata/<path:file>/move/<path:target>")
def move_file(file: str, target: str):
    info = userdata.move(farm().database, _team(), file, target, overwrite=_flag("overwrite"))
    return jsonify(info.as_json() if _flag("full_info") else info.path)


@blueprint.get("/settings")
def read_settings():
    return jsonify(userdata.settings(farm().database, _team()))


@blueprint.get("/settings/<path:setting>")
def read_setting(setting: str):
    return jsonify(userdata.settings(farm().database, _team()).get(setting))


@blueprint.post("/settings")
def write_settings():
    changes = _json_body()
    if not isinstance(changes, dict):
        return error_response(400, "invalid_json", "The settings must be a JSON object", type(changes).__name__)
    userdata.change_settings(farm().database, _team(), changes)
    return Response(status=200)


@blueprint.post("/settings/<path:setting>")
def write_setting(setting: str):
    userdata.change_settings(farm().database, _team(), {setting: _json_body()})
    return Response(status=200)


def _json_body():
    from web.context import BadJSON

    try:
        return json.loads(request.get_data() or b"null")
    except ValueError as exception:
        raise BadJSON(str(exception)) from None
