"""ComfyUI's own editor at `/`, from the `comfyui-frontend-package` wheel (`comfy-farm[frontend]`).

The package is ComfyUI's built frontend (index.html and its assets); this serves its files as
ComfyUI's server does, and the routes it calls are the farm's API. Without the package, `/` says
how to get it and points at the dashboard. With auth on, a visitor without a key signs in on the
dashboard's page first: the editor then acts with that session (see web.auth).
"""

from __future__ import annotations

import functools
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, redirect, send_from_directory, url_for

from web.auth import principal

# Hashed asset names never change content: cached for a year. Everything else is revalidated.
IMMUTABLE = 365 * 24 * 3600


@functools.cache
def frontend_root() -> Path | None:
    """The folder of the installed frontend's static files, or None when it is not installed."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    root = Path(comfyui_frontend_package.__file__).parent / "static"
    return root if (root / "index.html").is_file() else None


def core_extensions() -> list[str]:
    """The frontend's own extension scripts, as ComfyUI lists them at /extensions."""
    root = frontend_root()
    if root is None:
        return []
    return sorted("/" + path.relative_to(root).as_posix() for path in (root / "extensions").rglob("*.js"))


def index():
    root = frontend_root()
    if root is None:
        return Response(
            "<!doctype html><title>comfy-farm</title><p>ComfyUI's editor is not installed on this farm: "
            "<code>pip install 'comfy-farm[frontend]'</code> and restart. The farm's API is here, and "
            "its <a href='/dashboard/'>dashboard</a>.</p>", mimetype="text/html")
    if _needs_sign_in():
        return redirect(url_for("dashboard.login", next="/"))
    response = send_from_directory(root, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


def favicon():
    root = frontend_root()
    if root is None or not (root / "assets" / "favicon.ico").is_file():
        return Response(status=204)
    return send_from_directory(root / "assets", "favicon.ico", max_age=IMMUTABLE)


def user_css():
    # ComfyUI serves a user's CSS here when one exists; the farm keeps it in /userdata/user.css.
    return Response("", mimetype="text/css")


def make_blueprint() -> Blueprint:
    """The editor's routes: `/`, and one route per top-level file or folder of the installed
    frontend (`/assets/...`, `/extensions/...`, `/materialdesignicons.min.css` ...), so its files
    never shadow an API route (there is no catch-all)."""
    blueprint = Blueprint("frontend", __name__)
    blueprint.add_url_rule("/", "index", index)
    blueprint.add_url_rule("/favicon.ico", "favicon", favicon)
    blueprint.add_url_rule("/user.css", "user_css", user_css)
    blueprint.add_url_rule("/templates/<path:filename>", "template_file", template_file)
    root = frontend_root()
    for entry in sorted(root.iterdir()) if root is not None else ():
        if entry.name in ("index.html", "templates") or entry.name.startswith("."):
            continue
        if entry.is_dir():
            blueprint.add_url_rule(f"/{entry.name}/<path:filename>", "static_file", static_file,
                                   defaults={"folder": entry.name})
        else:
            blueprint.add_url_rule(f"/{entry.name}", "static_file", static_file,
                                   defaults={"folder": "", "filename": entry.name})
    return blueprint


def static_file(folder: str, filename: str):
    root = frontend_root()
    filename = f"{folder}/{filename}" if folder else filename
    if root is None or not (root / filename).is_file():  # send_from_directory refuses paths leaving the root
        return _not_found(filename)
    immutable = filename.startswith("assets/")
    response = send_from_directory(root, filename, max_age=IMMUTABLE if immutable else 0)
    if immutable:
        response.headers["Cache-Control"] = f"public, max-age={IMMUTABLE}, immutable"
    return response


def _needs_sign_in() -> bool:
    from web.auth import NOBODY

    return current_app.extensions["farm_auth"]["enabled"] and principal() is NOBODY


def _not_found(filename: str):
    from web.errors import error_response

    return error_response(404, "not_found", "Not found", filename)


def template_file(filename: str):
    """ComfyUI's workflow templates (the `comfyui-workflow-templates` package) when installed;
    without it, empty indexes, so the editor's template browser opens empty instead of failing."""
    found = _templates_root()
    if found is not None and (found / filename).is_file():
        return send_from_directory(found, filename, max_age=0)
    if filename.startswith("index") and filename.endswith(".json") and "/" not in filename:
        return jsonify({} if filename == "index_logo.json" else [])
    return _not_found(filename)


@functools.cache
def _templates_root() -> Path | None:
    try:
        import comfyui_workflow_templates  # noqa: F401 - optional: ComfyUI's template package
    except ImportError:
        return None
    try:
        from comfyui_workflow_templates import get_templates_path

        return Path(get_templates_path())
    except (ImportError, AttributeError, TypeError):
        return None
