"""Every failure answered in ComfyUI's error shape: {"error": {type, message, details, extra_info}}."""

from __future__ import annotations

import logging

from flask import jsonify
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from farm.graph.errors import error
from farm.storage import StorageUnavailable
from web.context import BadJSON

log = logging.getLogger(__name__)


def error_response(status: int, type_: str, message: str, details: str = "", extra_info: dict | None = None):
    return jsonify({"error": error(type_, message, details, extra_info), "node_errors": {}}), status


def register(app) -> None:
    @app.errorhandler(BadJSON)
    def bad_json(exception):
        return error_response(400, "invalid_json", "Invalid JSON body", str(exception))

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def database_down(exception):
        log.error("database unavailable: %s", exception)
        return error_response(503, "service_unavailable", "The farm's database is unavailable; retry later",
                              type(exception.orig).__name__ if getattr(exception, "orig", None) else "")

    def storage_down(exception):
        log.error("storage unavailable: %s", exception)
        return error_response(503, "storage_unavailable", "The farm's file storage is unavailable; retry later",
                              str(exception).splitlines()[0][:300] if str(exception) else type(exception).__name__)

    for failure in _storage_failures():
        app.register_error_handler(failure, storage_down)

    @app.errorhandler(HTTPException)
    def http_error(exception):
        names = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return error_response(exception.code, names.get(exception.code, "http_error"), exception.name,
                              exception.description or "")


def _storage_failures() -> tuple[type, ...]:
    """What a store can raise besides a missing file: the S3 client's errors where it is installed."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (StorageUnavailable,)
    return StorageUnavailable, BotoCoreError, ClientError
