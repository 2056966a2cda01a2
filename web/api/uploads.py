"""POST /upload/image and /upload/mask: files into the input (or temp, output) folder, ComfyUI's way.

Deviations from ComfyUI, on purpose:
- A `type` other than input, temp or output is a 400 in the error shape (ComfyUI fails with a 500).
- The uploaded filename is reduced to its basename ("../../x.png" is stored as "x.png");
  ComfyUI joins it as sent and answers 400 when it leaves the folder.
- /upload/mask answers 400 (bad or missing `original_ref`, unreadable image), 403 (original outside
  the store) or 404 (original not found) where ComfyUI writes nothing yet answers 200.
- /upload/mask scales a mask of another size to the original's size (ComfyUI fails with a 500), and
  its same-content check compares the written PNG, not the uploaded mask's bytes.
- /upload/mask refuses, with a 400, a mask or original that is not an image, is truncated, or
  declares more than web.images.MAX_PIXELS (a 12 KB PNG can declare 10,000 x 10,000 pixels): its
  size is read from the header, and nothing that large is decoded.

As in ComfyUI, /upload/image stores the bytes it is given without decoding them: a text file, a
zip or a decompression bomb is stored as sent (the routes that decode refuse them). A body over
FARM_MAX_UPLOAD_BYTES is a 413 in the error shape before the body is read (Flask's
MAX_CONTENT_LENGTH); file parts are spooled to disk past 500 KB, never held whole in memory.
"""

from __future__ import annotations

import io
import json

from flask import Blueprint, jsonify, request
from PIL import Image, PngImagePlugin

from farm.storage import KINDS, PathRejected
from web.api.files import FileRefError, locate
from web.auth import principal
from web.context import farm
from web.errors import error_response
from web.images import DECODE_ERRORS, ImageRefused, open_image

blueprint = Blueprint("uploads", __name__)


class UploadError(Exception):
    """A request the upload routes refuse; carries the answer to give."""

    def __init__(self, status: int, type_: str, message: str, details: str = ""):
        super().__init__(message)
        self.response = error_response(status, type_, message, details)


@blueprint.errorhandler(UploadError)
def refused(failure: UploadError):
    return failure.response


@blueprint.errorhandler(FileRefError)
def original_refused(failure: FileRefError):
    return failure.response()


@blueprint.post("/upload/image")
def upload_image():
    part, name, kind, subfolder, overwrite = _fields()
    return _store(kind, subfolder, name, part.stream, overwrite)


@blueprint.post("/upload/mask")
def upload_mask():
    part, name, kind, subfolder, overwrite = _fields()
    original = _original(request.form.get("original_ref"))
    try:
        with open_image(part.stream, "the mask") as mask:
            alpha = mask.convert("RGBA").getchannel("A")
        with original.open() as handle, open_image(handle, "the original") as image:
            text = dict(getattr(image, "text", {}))
            composed = image.convert("RGBA")
    except ImageRefused as refusal:
        raise UploadError(400, refusal.type, refusal.message, refusal.details) from None
    except DECODE_ERRORS as exception:  # opened, but its pixels are truncated or corrupt
        raise UploadError(400, "invalid_image", "The mask or the original is not a readable image",
                          str(exception)) from None
    if alpha.size != composed.size:
        alpha = alpha.resize(composed.size, Image.Resampling.BILINEAR)
    composed.putalpha(alpha)
    # The original's text chunks carry its workflow: the masked copy must still load in the editor.
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    composed.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    buffer.seek(0)
    return _store(kind, subfolder, name, buffer, overwrite)


def _fields():
    """The multipart fields both routes share: (image part, plain filename, type, subfolder, overwrite)."""
    part = request.files.get("image")
    if part is None:
        raise UploadError(400, "missing_image", "No image part in the upload", "the 'image' field is required")
    # Only the last path component names the file: the folder comes from type and subfolder.
    name = (part.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        raise UploadError(400, "invalid_filename", "The uploaded file has no usable name", part.filename or "")
    kind = request.form.get("type", "input")
    if kind not in KINDS:
        raise UploadError(400, "invalid_type", "Invalid upload type", f"type must be one of {list(KINDS)}")
    overwrite = request.form.get("overwrite") in ("true", "1")  # exact, as ComfyUI compares it
    return part, name, kind, request.form.get("subfolder", ""), overwrite


def _original(reference: str | None):
    """The image `original_ref` names, checked as /view checks its parameters."""
    try:
        ref = json.loads(reference) if reference else None
    except (TypeError, json.JSONDecodeError):
        ref = None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str) \
            or not all(isinstance(ref.get(key, ""), str) for key in ("subfolder", "type")):
        raise UploadError(400, "invalid_original_ref", "original_ref must be a JSON object naming an image",
                          '{"filename": str, "subfolder"?: str, "type"?: str}')
    return locate(ref["filename"], ref.get("type", "output"), ref.get("subfolder", ""))


def _store(kind: str, subfolder: str, name: str, stream, overwrite: bool):
    try:
        stored = farm().storage.for_team(principal().team).save_upload(kind, subfolder, name, stream, overwrite)
    except PathRejected as exception:
        return error_response(400, "invalid_path", "The upload would leave its folder", str(exception))
    return jsonify({"name": stored, "subfolder": subfolder, "type": kind})
