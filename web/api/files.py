"""GET /view: files from storage, with ComfyUI's path rules and no inline active content."""

from __future__ import annotations

from flask import Blueprint, request, send_file

from farm.storage import KINDS, PathRejected, content_type
from web.context import farm
from web.errors import error_response

blueprint = Blueprint("files", __name__)

# Served as downloads, never rendered: a stored file must not run script in the farm's origin.
ACTIVE_TYPES = {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
                "text/javascript", "application/javascript", "text/css"}
ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}


@blueprint.get("/view")
def view():
    filename = request.args.get("filename")
    if filename is None:
        return error_response(404, "not_found", "No filename given", "the filename parameter is required")
    kind = request.args.get("type", "output")
    for annotation, annotated_kind in ANNOTATIONS.items():
        if filename.endswith(annotation):
            filename, kind = filename[: -len(annotation)], annotated_kind
            break
    if not filename or filename.startswith("/") or ".." in filename:
        return error_response(400, "invalid_filename", "Invalid filename", filename)
    if kind not in KINDS:
        return error_response(400, "invalid_type", "Invalid file type", f"type must be one of {list(KINDS)}")
    storage = farm().storage
    subfolder = request.args.get("subfolder", "")
    try:
        storage.folder(kind, subfolder)
    except PathRejected as exception:
        return error_response(403, "forbidden", "Subfolder outside the storage", str(exception))
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]  # ComfyUI keeps only the basename
    try:
        path = storage.resolve(kind, subfolder, name)
    except PathRejected as exception:
        return error_response(403, "forbidden", "Path outside the storage", str(exception))
    if not path.is_file():
        return error_response(404, "not_found", "File not found", f"{kind}/{subfolder}/{name}".replace("//", "/"))

    mimetype = content_type(name)
    active = mimetype in ACTIVE_TYPES
    response = send_file(path, mimetype="application/octet-stream" if active else mimetype,
                         conditional=True, etag=True, max_age=None)
    disposition = "attachment; " if active else ""
    response.headers["Content-Disposition"] = f'{disposition}filename="{name}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
