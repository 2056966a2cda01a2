"""GET /openapi.json (and /api/openapi.json): the OpenAPI 3.1 description of this API (web/openapi).
Public, like the probes: it tells how to call the farm, nothing about anyone's work."""

from __future__ import annotations

import functools
import json

from flask import Blueprint, Response

from web.openapi import document

blueprint = Blueprint("openapi", __name__)


@functools.cache
def _text() -> str:
    return json.dumps(document(), separators=(",", ":"))


@blueprint.get("/openapi.json")
def openapi():
    return Response(_text(), mimetype="application/json")
