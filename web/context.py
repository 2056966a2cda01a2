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
    except RecursionError:
        # The parser recurses once per level: 100,000 nested lists must be a 400, not a 500.
        raise BadJSON("the request body is nested too deeply to be parsed") from None
    except ValueError as exception:
        # Besides syntax and encoding errors: an integer of more than 4300 digits (Python's
        # int_max_str_digits), which the parser refuses with a plain ValueError.
        raise BadJSON(f"the request body is not valid JSON: {str(exception)[:300]}") from None
