"""API keys in front of every route: each request gets one principal (`principal()`), or a 401.

`FARM_AUTH`: `on` needs a key on every request; `off` lets requests without one act as the
local user (every right, the default team: ComfyUI's behaviour on one machine); `auto` (the
default) is off when the farm listens on loopback only and on otherwise. A key is read from
`Authorization: Bearer <key>`, `X-API-Key: <key>`, the password of HTTP Basic auth (for clients
that only know user/password), or `?token=<key>` on the WebSocket (browsers cannot set headers
there; elsewhere a query string ends up in logs, so it is not read). A key that is presented
must be valid, whatever the mode: a client that sends one expects it to count.
"""

from __future__ import annotations

import base64

from urllib.parse import urlsplit

from flask import g, redirect, request, url_for

from farm.services.principal import LOCAL, Forbidden, Principal
from farm.services.teams import KeyRing
from web.errors import error_response

WEBSOCKET_PATHS = ("/ws", "/api/ws")


def auth_enabled(settings) -> bool:
    return settings.auth_enabled


DASHBOARD = "/dashboard"
PUBLIC_ENDPOINTS = ("dashboard.login", "dashboard.static", "frontend.index", "frontend.static_file",
                    "frontend.user_css", "frontend.favicon", "frontend.template_file",
                    "openapi.openapi", "api_openapi.openapi")
# Who a public page acts as: no team, the lowest role (they act on nothing).
NOBODY = Principal("", "submit", "anonymous")


def _session_principal(keys):
    """The dashboard's signed-in key (its session cookie), for the dashboard's pages, and for ComfyUI's
    editor and the dashboard's own /ws when they come from a page of this farm.

    The cookie is SameSite=Lax, so another site's page cannot make a browser send it with a fetch,
    an image or a form post; it can still open a WebSocket or post with it in older browsers, so
    outside the dashboard's (CSRF-checked) forms, a socket or a request that changes anything
    counts the cookie only with an Origin of this farm's own host."""
    from flask import session

    digest = session.get("key_hash")
    if not digest:
        return None
    if request.path in WEBSOCKET_PATHS or (request.method not in ("GET", "HEAD")
                                           and not request.path.startswith(DASHBOARD)):
        origin = request.headers.get("Origin", "")
        if urlsplit(origin).netloc != request.host:
            return None
    return keys.principal_by_hash(digest)


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            _user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if password:
            return password
    if request.headers.get("X-API-Key"):
        return request.headers["X-API-Key"].strip()
    if request.path in WEBSOCKET_PATHS and request.args.get("token"):
        return request.args["token"]
    return None


def principal() -> Principal:
    """Who this request acts as (set by the guard before every route)."""
    return g.get("farm_principal", LOCAL)


def unauthorized(message: str):
    response, status = error_response(401, "unauthorized", message,
                                      "send an API key as 'Authorization: Bearer <key>', 'X-API-Key: <key>' or as "
                                      "the password of HTTP Basic auth (?token=<key> on /ws)")
    response.headers["WWW-Authenticate"] = 'Bearer realm="comfy-farm", Basic realm="comfy-farm"'
    return response, status


def forbidden(exception: Forbidden):
    return error_response(403, "forbidden", f"Forbidden: {exception}",
                          f"this key's role does not allow {exception.action}")


def register(app, settings, database) -> None:
    """Install the guard; `database` holds the keys."""
    enabled = auth_enabled(settings)
    keys = KeyRing(database)
    app.extensions["farm_auth"] = {"enabled": enabled, "keys": keys}

    from web.api.health import PUBLIC_PATHS

    @app.before_request
    def identify():
        if request.method == "OPTIONS" or request.path in PUBLIC_PATHS:
            return None
        if request.endpoint in PUBLIC_ENDPOINTS:
            # the sign-in page, the dashboard's CSS and script, the editor's page and files
            g.farm_principal = (None if presented_key() else _session_principal(keys)) or NOBODY
            return None
        secret = presented_key()
        if secret is None:
            signed_in = _session_principal(keys)
            if signed_in is not None:
                g.farm_principal = signed_in
                return None
            if enabled:
                if request.path.startswith(DASHBOARD) and request.method == "GET":
                    return redirect(url_for("dashboard.login", next=request.full_path))
                return unauthorized("This farm needs an API key")
            g.farm_principal = LOCAL
            return None
        found = keys.principal(secret)
        if found is None:
            return unauthorized("Unknown or revoked API key")
        g.farm_principal = found
        return None

    @app.errorhandler(Forbidden)
    def refuse(exception):
        return forbidden(exception)
