"""The OpenAPI 3.1 description of the farm's HTTP API (GET /openapi.json), assembled from one module per area.

Invariant: it describes exactly the app's routes, with their methods: tests/unit/test_openapi.py
compares it with the app's URL map both ways. The API's blueprints are registered twice, bare and
under /api (ComfyUI's mirror), so every API path is described under /api too (the farm's own /api/...
routes therefore also answer at /api/api/...); a mirrored path item says which it mirrors in
`x-mirror-of`. The dashboard and the editor's pages are not mirrored.
"""

from __future__ import annotations

import copy
import functools

from web.openapi import comfyui, farm, pages, user
from web.openapi.parts import RESPONSES
from web.openapi.schemas import SCHEMAS

# (paths, mirrored under /api)
AREAS = ((comfyui.PATHS, True), (user.PATHS, True), (farm.PATHS, True), (pages.PATHS, False))
MIRROR_PREFIX = "/api"

DESCRIPTION = """\
ComfyUI's HTTP API (server version 0.3.64 and the newer jobs API) in front of a render farm, and the
farm's own API: workers and dispatch, teams, keys, batches, probes and metrics.

Every failure is answered in ComfyUI's error shape, `{"error": {"type", "message", "details",
"extra_info"}, "node_errors": {}}`, except the jobs API's (`{"error": "<text>"}`, as newer ComfyUI
answers) and the origin check's 403 (an empty body).

With keys on (FARM_AUTH), send one as `Authorization: Bearer <key>`, `X-API-Key: <key>` or the
password of HTTP Basic auth; a key acts for its team with its role (submit < operator < admin).
With keys off every request acts as the local admin of the default team.
"""

TAGS = [
    {"name": comfyui.TAG, "description": "ComfyUI's routes (spec section 3)"},
    {"name": comfyui.JOBS, "description": "Newer ComfyUI's jobs API: prompts as jobs"},
    {"name": user.TAG, "description": "The user folder (one per team) and the editor's settings"},
    {"name": user.EDITOR, "description": "What ComfyUI's editor calls besides the API proper"},
    {"name": farm.WORKERS, "description": "The operator's control of workers and dispatch (admins)"},
    {"name": farm.TEAMS, "description": "Teams, their shares and limits, API keys, the audit log"},
    {"name": farm.BATCHES, "description": "Batches: sweeps and lists of workflows, run as cells"},
    {"name": farm.OPS, "description": "Probes, metrics and this description"},
    {"name": pages.TAG, "description": "The operator's dashboard (HTML pages and forms)"},
]

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (farm keys create)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "basic": {"type": "http", "scheme": "basic", "description": "any user name, the API key as the password"},
}


def _mirrored(path: str, item: dict) -> dict:
    found = copy.deepcopy(item)
    for operation in found.values():
        operation["operationId"] = "api_" + operation["operationId"]
    found["x-mirror-of"] = path
    return found


@functools.cache
def document() -> dict:
    """The description (built once per process; callers must not change it)."""
    import farm as farm_package

    paths = {}
    for area, mirrored in AREAS:
        for path, item in area.items():
            paths[path] = item
            if mirrored:
                paths[MIRROR_PREFIX + path] = _mirrored(path, item)
    return {
        "openapi": "3.1.0",
        "info": {"title": "comfy-farm", "version": farm_package.__version__, "description": DESCRIPTION},
        "servers": [{"url": "/"}],
        "tags": TAGS,
        "security": [{"bearer": []}, {"apiKey": []}, {"basic": []}, {}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "responses": RESPONSES, "securitySchemes": SECURITY_SCHEMES},
    }
