"""Small constructors for the OpenAPI description: operations, parameters, bodies and responses.

Every operation gets the answers the app-wide guards can give whatever the route: 403 from the
origin check (an empty text/plain body, or the error shape when a key's role falls short), 401
when the farm needs a key (unless the route is public), 503 when the database is down (unless
the route never reads it), 413 when it takes a body (FARM_MAX_UPLOAD_BYTES), 404 when it has
path parameters (a value no route matches), and 414 when it takes query parameters (the HTTP
server refuses a request line longer than 4,094 bytes, with an HTML page, before the app runs).
"""

from __future__ import annotations

JSON = "application/json"
STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN_TEXT = {"type": "string", "enum": ["true", "false"]}
# Path segments: Flask's default converter matches anything but "/".
SEGMENT = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
PUBLIC: list = []


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def query(name: str, schema: dict, description: str, *, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def path(name: str, description: str, schema: dict | None = None) -> dict:
    """A path parameter; `schema` STRING for Flask's `<path:...>` (slashes allowed, sent as %2F)."""
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema or SEGMENT}


def json_body(schema: dict, description: str, *, required: bool = True, example=None) -> dict:
    media = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "required": required, "content": {JSON: media}}


def answer(description: str, schema: dict | None = None, media: str = JSON) -> dict:
    """A response; with no schema, one that has no body."""
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {media: {"schema": schema}}}


def binary(description: str, *media: str) -> dict:
    return {"description": description,
            "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in media}}


def html(description: str) -> dict:
    return {"description": description, "content": {"text/html": {"schema": STRING}}}


def failure(description: str) -> dict:
    """An answer in ComfyUI's error shape."""
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


def redirect(description: str) -> dict:
    return {"description": description, "headers": {"Location": {"schema": STRING}}}


def operation(operation_id: str, summary: str, *, tag: str, responses: dict, description: str | None = None,
              params: tuple = (), body: dict | None = None, public: bool = False, role: str | None = None,
              database: bool = True) -> dict:
    """An operation with the guards' answers added (see the module docstring); `role` names the
    least role it needs when the farm has keys (a 403 in the error shape for keys below it)."""
    found = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        found["description"] = description
    if params:
        found["parameters"] = list(params)
    if body is not None:
        found["requestBody"] = body
    found["responses"] = dict(responses)
    if public:
        found["security"] = PUBLIC
    else:
        found["responses"].setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
    if "403" not in found["responses"]:
        found["responses"]["403"] = {"$ref": "#/components/responses/Forbidden" if role or not public
                                     else "#/components/responses/CrossSite"}
    if role:
        found["x-farm-role"] = role
    if body is not None:
        found["responses"].setdefault("413", {"$ref": "#/components/responses/TooLarge"})
    if any(param["in"] == "query" for param in params):
        found["responses"].setdefault("414", {"$ref": "#/components/responses/UriTooLong"})
    if any(param["in"] == "path" for param in params):
        found["responses"].setdefault("404", {"$ref": "#/components/responses/NoRoute"})
        # (a path no route matches is not a public route: with keys on, the guard answers first)
        found["responses"].setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
    if database:
        found["responses"].setdefault("503", {"$ref": "#/components/responses/Unavailable"})
    return found


RESPONSES = {
    "Unauthorized": {
        "description": "The farm needs an API key (FARM_AUTH) and none, or an unknown or revoked one, was sent",
        "headers": {"WWW-Authenticate": {"schema": STRING}},
        "content": {JSON: {"schema": ref("Error")}},
    },
    "Forbidden": {
        "description": "The key's role does not allow this (error shape), or a page of another site sent it "
                       "(the origin check: an empty text/plain body)",
        "content": {JSON: {"schema": ref("Error")}, "text/plain": {"schema": {"type": "string", "maxLength": 0}}},
    },
    "CrossSite": {
        "description": "A page of another site sent it (the origin check): an empty body",
        "content": {"text/plain": {"schema": {"type": "string", "maxLength": 0}}},
    },
    "NoRoute": {
        "description": "No route has this path: a path parameter with a character it cannot hold (a newline)",
        "content": {JSON: {"schema": ref("Error")}},
    },
    "UriTooLong": {
        "description": "The request line is longer than the HTTP server reads (gunicorn's 4,094 bytes)",
        "content": {"text/html": {"schema": STRING}},
    },
    "TooLarge": {
        "description": "The body is larger than FARM_MAX_UPLOAD_BYTES (GET /features says how large it may be)",
        "content": {JSON: {"schema": ref("Error")}},
    },
    "Unavailable": {
        "description": "The farm's database or file storage is unavailable; retry later",
        "content": {JSON: {"schema": ref("Error")}},
    },
}
