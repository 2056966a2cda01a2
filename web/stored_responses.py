"""A stored file streamed from a store without local paths (S3), with validators and Range requests.

Flask's send_file does both for a path on disk; for an object in a bucket it would read the whole
object and skip to a range here. So this asks the store for the range itself (a ranged GET), and
answers 304 / 206 / 416 as send_file does, using werkzeug's parsed headers.
"""

from __future__ import annotations

from flask import Response, request
from werkzeug.datastructures import ContentRange

from farm.storage import StoredFile


def stream_stored(storage, ref: tuple[str, str, str], info: StoredFile, mimetype: str) -> Response:
    """The file at `ref` (type, subfolder, filename) in `storage`, answering the request's
    If-None-Match / If-Modified-Since and a single byte range."""
    modified = info.modified.replace(microsecond=0)
    if _not_modified(info.etag, modified):
        response = Response(status=304)
        _validators(response, info.etag, modified)
        return response
    bounds = _wanted_range(info.etag, modified, info.size)
    if bounds == "unsatisfiable":
        response = Response(status=416)
        response.content_range = ContentRange("bytes", None, None, info.size)
        return response
    if bounds is None:
        response = Response(storage.read(*ref), mimetype=mimetype, direct_passthrough=True)
        response.content_length = info.size
    else:
        start, stop = bounds
        response = Response(storage.read(*ref, first=start, last=stop - 1), status=206, mimetype=mimetype,
                            direct_passthrough=True)
        response.content_length = stop - start
        response.content_range = ContentRange("bytes", start, stop, info.size)
    response.accept_ranges = "bytes"
    _validators(response, info.etag, modified)
    return response


def _validators(response: Response, etag: str, modified) -> None:
    if etag:
        response.set_etag(etag)
    response.last_modified = modified


def _not_modified(etag: str, modified) -> bool:
    if request.if_none_match:
        return bool(etag) and request.if_none_match.contains(etag)
    since = request.if_modified_since
    return since is not None and modified <= since


def _wanted_range(etag: str, modified, size: int):
    """(start, stop) of the one range asked, None for the whole file (no range, several ranges, or an
    If-Range the file no longer matches), or "unsatisfiable"."""
    wanted = request.range
    if wanted is None or wanted.units != "bytes" or len(wanted.ranges) != 1:
        return None
    condition = request.if_range
    if condition.etag is not None and condition.etag != etag:
        return None
    if condition.date is not None and modified > condition.date:
        return None
    bounds = wanted.range_for_length(size)
    return "unsatisfiable" if bounds is None else bounds
