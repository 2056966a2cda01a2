"""Studio batches over HTTP: POST /api/batches (JSON, or multipart with a rows file), GET /api/batches,
GET /api/batches/<id>, GET /api/batches/<id>/cells, POST /api/batches/<id>/<action>, the bulk
POST /api/batches/actions, DELETE /api/batches/<id>/blocklist/<worker>, and the downloads
GET /api/batches/<id>/outputs.zip and /sheet.png."""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify, request, stream_with_context

from farm.services import batch_files, batch_submit, batches
from web.auth import principal
from web.context import BadJSON, farm, json_body
from web.numbers import INT32, whole

blueprint = Blueprint("batches", __name__)

MAX_ROWS_FILE_BYTES = 64 * 1024 * 1024


@blueprint.errorhandler(batches.BatchError)
def refused(error: batches.BatchError):
    return jsonify(error.body()), error.status


def _object_body() -> dict:
    body = json_body()
    if not isinstance(body, dict):
        raise BadJSON("the request body must be a JSON object")
    return body


@blueprint.post("/api/batches")
def create_batch():
    rows_text, rows_filename = None, ""
    if request.mimetype == "multipart/form-data":
        # The batch as a JSON form field ("batch"), its rows as a CSV or JSON Lines file ("rows").
        try:
            body = json.loads(request.form.get("batch", ""))
        except json.JSONDecodeError as error:
            raise BadJSON(f"the 'batch' form field is not valid JSON: {error}") from None
        upload = request.files.get("rows")
        if upload is not None:
            data = upload.read(MAX_ROWS_FILE_BYTES + 1)
            if len(data) > MAX_ROWS_FILE_BYTES:
                raise batches.BatchError(413, {"type": "request_too_large", "message": "The rows file is too large",
                                               "details": f"at most {MAX_ROWS_FILE_BYTES} bytes", "extra_info": {}})
            try:
                rows_text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise batches.BatchError(400, {"type": "invalid_batch", "message": "The rows file is not UTF-8 text",
                                               "details": upload.filename or "", "extra_info": {}}) from None
            rows_filename = (upload.filename or "").lower()
    else:
        body = json_body()
    answer = batch_submit.create(farm(), body, principal(), rows_text, rows_filename)
    return jsonify(answer), 200 if answer.get("dry_run") else 201


@blueprint.get("/api/batches")
def list_batches():
    args = request.args
    try:
        limit = int(args.get("limit", 50))
    except ValueError:
        raise batches.BatchError(400, {"type": "invalid_query", "message": "limit must be an integer",
                                       "details": args.get("limit", ""), "extra_info": {}}) from None
    return jsonify(batches.list_batches(farm().database, principal(), team=args.get("team"), state=args.get("state"),
                                        name=args.get("name"), before=args.get("before"), limit=limit))


@blueprint.get("/api/batches/<batch_id>")
def get_batch(batch_id: str):
    return jsonify(batches.detail(farm().database, principal(), batch_id))


@blueprint.get("/api/batches/<batch_id>/cells")
def get_cells(batch_id: str):
    try:
        after, limit = whole(request.args.get("after"), -1), whole(request.args.get("limit"), 100)
    except ValueError:
        raise batches.BatchError(400, {"type": "invalid_query", "message": "after and limit must be whole numbers",
                                       "details": "", "extra_info": {}}) from None
    return jsonify(batches.cells(farm().database, principal(), batch_id, after, limit))


@blueprint.get("/api/batches/<batch_id>/outputs.zip")
def outputs_zip(batch_id: str):
    batch = batches.owned(farm().database, principal(), batch_id)
    stream = batch_files.zip_stream(farm().database, farm().storage.for_team(batch.team), batch.id)
    response = Response(stream_with_context(stream), mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="batch-{batch.id[:8]}.zip"'
    return response


@blueprint.get("/api/batches/<batch_id>/sheet.png")
def contact_sheet(batch_id: str):
    batch = batches.owned(farm().database, principal(), batch_id)
    try:
        limit = max(1, min(int(request.args.get("limit", 400)), batch_files.MAX_SHEET_CELLS))
    except ValueError:
        raise batches.BatchError(400, {"type": "invalid_query", "message": "limit must be an integer",
                                       "details": "", "extra_info": {}}) from None
    png = batch_files.contact_sheet(farm().database, farm().storage.for_team(batch.team), batch.id, batch.sweep,
                                    limit)
    return Response(png, mimetype="image/png", headers={"Content-Disposition": f'inline; filename="sheet-{batch.id[:8]}.png"'})


@blueprint.delete("/api/batches/<batch_id>/blocklist/<worker>")
def unblock_worker(batch_id: str, worker: str):
    return jsonify(batches.unblock(farm(), principal(), batch_id, worker))


@blueprint.post("/api/batches/actions")
def bulk_action():
    body = _object_body()
    ids, action = body.get("ids"), body.get("action")
    if not isinstance(ids, list) or not isinstance(action, str):
        raise batches.BatchError(400, {"type": "invalid_batch", "message": "give 'action' and a list of batch 'ids'",
                                       "details": "", "extra_info": {}})
    return jsonify({"batches": batches.act(farm(), principal(), ids, action, body.get("priority"))})


@blueprint.post("/api/batches/<batch_id>/<action>")
def batch_action(batch_id: str, action: str):
    body = json_body(default={}) if action in ("priority", "retry") else {}
    body = body if isinstance(body, dict) else {}
    cells = body.get("cells")
    if isinstance(cells, list) and any(isinstance(i, int) and abs(i) > INT32 for i in cells):
        # (no cell has such an index, and the database could not compare with it)
        raise batches.invalid("cells (a list of cell indices) goes with retry on one batch")
    return jsonify(batches.act(farm(), principal(), [batch_id], action, body.get("priority"), body.get("cells"))[0])
