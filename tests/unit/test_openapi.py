"""The OpenAPI description (web/openapi): valid OpenAPI 3.1, served without a key, and kept true:
its paths and methods are exactly the app's routes, and what it says needs a key does."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from web.openapi import document

METHODS = ("get", "post", "put", "patch", "delete")
# The app's own static folder and the editor's asset files (one route per entry of the installed
# frontend package, so they change with the package): not described.
UNDESCRIBED_ENDPOINTS = ("static", "frontend.static_file")


def described_operations():
    for path, item in document()["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: <name>, <path:name> -> {name}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@pytest.fixture
def auth_client(settings, context):
    from web import create_app

    return create_app(settings.with_overrides(auth="on"), context=context).test_client()


def test_the_description_is_valid_openapi_3_1():
    spec = document()
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    ids = [operation["operationId"] for _, _, operation in described_operations()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_it_is_served_without_a_key_at_both_paths(auth_client):
    for path in ("/openapi.json", "/api/openapi.json"):
        answer = auth_client.get(path)
        assert answer.status_code == 200, path
        assert answer.mimetype == "application/json"
        assert answer.get_json() == document()


def test_every_route_is_described_with_its_methods_and_nothing_else(client):
    routes: dict[str, set[str]] = {}
    for rule in client.application.url_map.iter_rules():
        if rule.endpoint in UNDESCRIBED_ENDPOINTS:
            continue
        methods = {method.lower() for method in rule.methods} - {"head", "options"}
        routes.setdefault(openapi_path(rule.rule), set()).update(methods)
    described = {path: {method for method in METHODS if method in item} for path, item in document()["paths"].items()}
    missing = {path: sorted(methods - described.get(path, set())) for path, methods in routes.items()
               if methods - described.get(path, set())}
    invented = {path: sorted(methods - routes.get(path, set())) for path, methods in described.items()
                if methods - routes.get(path, set())}
    assert missing == {}, "routes the description lacks"
    assert invented == {}, "described operations the app does not have"
    assert len(routes) > 150


def test_every_api_path_is_mirrored_under_api_and_the_pages_are_not():
    paths = document()["paths"]
    for path, item in paths.items():
        if "x-mirror-of" in item:
            assert path == "/api" + item["x-mirror-of"]
            assert {m for m in METHODS if m in item} == {m for m in METHODS if m in paths[item["x-mirror-of"]]}
    bare = [path for path, item in paths.items() if "x-mirror-of" not in item]
    for path in bare:
        if path.startswith("/dashboard") or path in ("/", "/favicon.ico", "/user.css", "/templates/{filename}"):
            assert "/api" + path not in paths, path
        else:
            assert paths["/api" + path]["x-mirror-of"] == path


def _sample_url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_what_it_says_needs_a_key_does_and_public_routes_do_not(auth_client):
    """With keys on and none sent: 401 wherever 401 is described (a redirect to the sign-in page for
    the dashboard's pages), never on the public routes."""
    checked = 0
    for path, method, operation in described_operations():
        if path in ("/ws", "/api/ws"):
            continue  # a handshake: covered by the WebSocket tests
        answer = auth_client.open(_sample_url(path), method=method.upper())
        public = operation.get("security") == []
        if public:
            # (the sign-in form's own 401 is a page: an unknown key was typed in)
            assert not (answer.status_code == 401 and answer.is_json), (method, path)
        elif path.startswith("/dashboard") and method == "get":
            assert answer.status_code == 302 and "/dashboard/login" in answer.headers["Location"], (method, path)
        else:
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert answer.get_json()["error"]["type"] == "unauthorized"
        assert str(answer.status_code) in operation["responses"], (method, path, answer.status_code)
        checked += 1
    assert checked > 150


def test_the_error_shape_is_comfyuis():
    error = document()["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "node_errors"]
    assert document()["components"]["schemas"]["ErrorObject"]["required"] == ["type", "message", "details",
                                                                              "extra_info"]
