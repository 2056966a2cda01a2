"""GET /view: files from storage, with ComfyUI's path rules, previews and no inline active content."""

from __future__ import annotations

import dataclasses
import io

from flask import Blueprint, Response, redirect, request, send_file
from PIL import Image

from farm.storage import KINDS, PathRejected, StoredFile, content_type
from web.stored_responses import stream_stored
from web.auth import principal
from web.context import farm
from web.errors import error_response
from web.images import ImageRefused, open_image

blueprint = Blueprint("files", __name__)

# Served as downloads, never rendered: a stored file must not run script in the farm's origin.
ACTIVE_TYPES = {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
                "text/javascript", "application/javascript", "text/css"}
ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}
PREVIEW_FORMATS = ("webp", "jpeg")
# Pillow refuses images over twice its pixel limit with this error instead of an OSError.
UNREADABLE_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class FileRefError(Exception):
    """A file reference that fails ComfyUI's /view checks; carries the answer to give."""

    def __init__(self, status: int, type_: str, message: str, details: str = ""):
        super().__init__(message)
        self.status, self.type, self.message, self.details = status, type_, message, details

    def response(self):
        return error_response(self.status, self.type, self.message, self.details)


def team_storage():
    """The storage of the requester's team; an admin may name another with `?team=`. Another
    team's name from anyone else finds nothing (404), as its files do not exist for them."""
    who, asked = principal(), request.args.get("team")
    if asked and asked != who.team:
        if not who.is_admin:
            raise FileRefError(404, "not_found", "File not found", "")
        try:
            return farm().storage.for_team(asked)
        except PathRejected as exception:
            raise FileRefError(400, "invalid_team", "Invalid team", str(exception)) from None
    return farm().storage.for_team(who.team)


@dataclasses.dataclass(frozen=True)
class Located:
    """A stored file /view found: where it is, its plain name, and its size and validator."""

    storage: object
    kind: str
    subfolder: str
    name: str
    info: StoredFile

    @property
    def ref(self) -> tuple[str, str, str]:
        return self.kind, self.subfolder, self.name

    def open(self):
        return self.storage.open(*self.ref)


def locate(filename: str, kind: str, subfolder: str) -> Located:
    """The existing file named like /view names it; the checks in ComfyUI's order."""
    for annotation, annotated_kind in ANNOTATIONS.items():
        if filename.endswith(annotation):
            filename, kind = filename[: -len(annotation)], annotated_kind
            break
    if not filename or filename.startswith("/") or ".." in filename:
        raise FileRefError(400, "invalid_filename", "Invalid filename", filename)
    if kind not in KINDS:
        raise FileRefError(400, "invalid_type", "Invalid file type", f"type must be one of {list(KINDS)}")
    storage = team_storage()
    try:
        storage.check_folder(kind, subfolder)
    except PathRejected as exception:
        raise FileRefError(403, "forbidden", "Subfolder outside the storage", str(exception)) from None
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]  # ComfyUI keeps only the basename
    try:
        info = storage.stat(kind, subfolder, name)
    except PathRejected as exception:
        raise FileRefError(403, "forbidden", "Path outside the storage", str(exception)) from None
    except FileNotFoundError:
        raise FileRefError(404, "not_found", "File not found",
                           f"{kind}/{subfolder}/{name}".replace("//", "/")) from None
    return Located(storage, kind, subfolder, name, info)


@blueprint.get("/view")
def view():
    filename = request.args.get("filename")
    if filename is None:
        return error_response(404, "not_found", "No filename given", "the filename parameter is required")
    try:
        found = locate(filename, request.args.get("type", "output"), request.args.get("subfolder", ""))
    except FileRefError as failure:
        return failure.response()
    name = found.name

    preview, channel = request.args.get("preview"), request.args.get("channel", "rgba")
    if preview is not None or channel in ("rgb", "a"):
        try:
            # Decoded only within web.images' pixel cap: a bomb stored in input/ is a 400, not an OOM.
            with found.open() as handle, open_image(handle, name) as image:
                if preview is not None:
                    body, fmt = _preview(image, preview, request.args.get("channel", ""))
                else:
                    body, fmt = _channel(image, channel), "png"
        except ImageRefused as refusal:
            return error_response(400, refusal.type, refusal.message, refusal.details)
        except UNREADABLE_IMAGE as exception:
            return error_response(400, "invalid_image", "The file is not an image that can be converted",
                                  f"{name}: {exception}")
        response = Response(body, mimetype=f"image/{fmt}")
        response.headers["Content-Disposition"] = f'filename="{name}"'
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    mimetype = content_type(name)
    active = mimetype in ACTIVE_TYPES
    mimetype = "application/octet-stream" if active else mimetype
    disposition = f'{"attachment; " if active else ""}filename="{name}"'
    presigned = found.storage.presigned_url(*found.ref, mimetype=mimetype, disposition=disposition)
    if presigned:
        return redirect(presigned, code=302)
    path = found.storage.local_path(*found.ref)
    if path is not None:
        response = send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=None)
    else:
        response = stream_stored(found.storage, found.ref, found.info, mimetype)
    response.headers["Content-Disposition"] = disposition
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _preview(image: Image.Image, preview: str, channel: str) -> tuple[bytes, str]:
    """`preview=<fmt>[;<quality>]`: webp or jpeg (webp when unknown or an alpha channel is asked)."""
    parts = preview.split(";")
    fmt = parts[0] if parts[0] in PREVIEW_FORMATS and "a" not in channel else "webp"
    # isdecimal, not isdigit: int() refuses digits such as "²"; Pillow takes 0-100.
    quality = min(int(parts[-1]), 100) if parts[-1].isdecimal() and len(parts[-1]) < 10 else 90
    if fmt == "jpeg" or channel == "rgb":
        image = image.convert("RGB")
    elif image.mode not in ("RGB", "RGBA"):
        # Palette, grey and 16-bit images: WebP takes 8-bit RGB(A) only.
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=quality)
    return buffer.getvalue(), fmt


def _channel(image: Image.Image, channel: str) -> bytes:
    """`channel=rgb`: the image without alpha; `channel=a`: black with the image's alpha (255 if none)."""
    if channel == "rgb":
        result = image.convert("RGB")
    else:
        if image.has_transparency_data:
            alpha = image.convert("RGBA").getchannel("A")
        else:
            alpha = Image.new("L", image.size, 255)
        result = Image.new("RGBA", image.size, (0, 0, 0, 0))
        result.putalpha(alpha)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG")
    return buffer.getvalue()
