"""Access to the farm's parts from a request."""

from __future__ import annotations

import json

from flask import current_app, request

from farm.services.context import FarmContext


class BadJSON(ValueError):
    """The request body is not valid JSON."""


def farm() -> FarmContext:
    return current_app.extensions["farm"]


def json_body(default=None):
    """The body parsed as JSON whatever the Content-Type (ComfyUI's clients send text/plain too)."""
    data = request.get_data(cache=True)
    if not data.strip():
        if default is not None:
            return default
        raise BadJSON("the request body is empty; expected a JSON object")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exception:
        raise BadJSON(f"the request body is not valid JSON: {exception}") from None
