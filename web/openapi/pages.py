"""The pages in the OpenAPI description: the operator's dashboard under /dashboard (HTML, forms with a
CSRF token) and ComfyUI's editor at / (its page, favicon, user.css and templates). Neither is
mirrored under /api; the editor's own asset files (one route per top-level entry of the installed
frontend package) are left out, as they change with the package."""

from __future__ import annotations

from web.openapi.comfyui import PATHS as COMFYUI
from web.openapi.farm import PATHS as FARM
from web.openapi.parts import (INTEGER, JSON, STRING, answer, binary, failure, html, operation, path, query,
                               redirect)

TAG, EDITOR = "Dashboard", "Editor"
SIGN_IN = redirect("Not signed in (the farm needs keys): to the sign-in page")
BACK = redirect("Done: back to the page (next) with a message")
CSRF = "The form's CSRF token (from the page)"
REFUSED = {"description": "The session's key may not do this (a page saying so), or the origin check refused it",
           "content": {"text/html": {"schema": STRING}, "text/plain": {"schema": {"type": "string", "maxLength": 0}},
                       JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
NOT_FOUND = {"description": "Not found (a page, or the error shape)",
             "content": {"text/html": {"schema": STRING}, JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _form(properties: dict, required: tuple = ()) -> dict:
    schema = {"type": "object", "properties": {"csrf": {"type": "string", "description": CSRF},
                                               "next": {"type": "string", "description": "the page to go back to"},
                                               **properties}, "required": ["csrf", *required]}
    return {"description": "the page's form", "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


def _page(operation_id: str, summary: str, *, params: tuple = (), role: str | None = None, extra: dict | None = None):
    responses = {"200": html("The page"), "302": SIGN_IN, "403": REFUSED, **(extra or {})}
    return operation(operation_id, summary, tag=TAG, params=params, role=role, responses=responses)


def _action(operation_id: str, summary: str, form: dict, *, params: tuple = (), extra: dict | None = None):
    responses = {"303": BACK, "400": failure("The CSRF token is missing or stale, or a field is not a number"),
                 "403": REFUSED, **(extra or {})}
    return operation(operation_id, summary, tag=TAG, params=params, body=form, responses=responses)


def _copy(operation: dict, operation_id: str, summary: str) -> dict:
    """The API's file downloads, also under /dashboard so the session cookie opens them; a refused
    batch is a page there (the dashboard's handler of batch errors)."""
    responses = dict(operation["responses"])
    for code in ("400", "404"):
        if "content" in responses.get(code, {}):
            responses[code] = {**responses[code], "content": {**responses[code]["content"],
                                                              "text/html": {"schema": STRING}}}
    found = responses.get("302")
    responses["302"] = redirect(f"{found['description']}; or not signed in: to the sign-in page" if found
                                else SIGN_IN["description"])
    return {**operation, "operationId": operation_id, "summary": summary, "tags": [TAG], "responses": responses}


BATCHES = "/api/batches/{batch_id}"


def _downloads() -> dict:
    return {
        "/dashboard/view": {"get": _copy(COMFYUI["/view"]["get"], "dashboard_view", "A stored file (GET /view)")},
        "/dashboard/batches/{batch_id}/sheet.png": {"get": _copy(
            FARM[f"{BATCHES}/sheet.png"]["get"], "dashboard_batch_sheet", "A batch's contact sheet")},
        "/dashboard/batches/{batch_id}/outputs.zip": {"get": _copy(
            FARM[f"{BATCHES}/outputs.zip"]["get"], "dashboard_batch_outputs", "A batch's outputs as a zip")},
    }


HISTORY_FILTERS = (query("state", {"type": "string", "enum": ["success", "error", "interrupted", "cancelled"]}, ""),
                   query("team", STRING, "only this team's"), query("batch", STRING, "only this batch's"),
                   query("worker", STRING, "only what this worker ran"),
                   query("since", {"type": "string", "enum": ["1h", "24h", "7d"]}, "only this recent"),
                   query("before", STRING, "the previous page's last prompt"))

PATHS = {
    "/dashboard/": {"get": _page("dashboard_home", "Overview: queue, workers, teams, recent work")},
    "/dashboard/login": {
        "get": operation("dashboard_login_page", "The sign-in page", tag=TAG, public=True, database=False,
                         params=(query("next", STRING, "where to go after signing in"),),
                         responses={"200": html("The sign-in form")}),
        "post": operation(
            "dashboard_login", "Sign in with an API key (kept as its SHA-256 in the session cookie)", tag=TAG,
            public=True,
            body={"description": "the sign-in form", "required": True,
                  "content": {"application/x-www-form-urlencoded": {"schema": {
                      "type": "object", "properties": {"key": STRING, "next": STRING}, "required": ["key"]}}}},
            responses={"303": redirect("Signed in: to next, or the overview"),
                       "401": html("Unknown or revoked API key: the form again")}),
    },
    "/dashboard/logout": {
        "post": operation("dashboard_logout", "Sign out", tag=TAG, body=_form({}),
                          responses={"303": redirect("To the sign-in page"),
                                     "400": failure("The CSRF token is missing or stale"), "403": REFUSED}),
    },
    "/dashboard/workers": {"get": _page("dashboard_workers", "The workers and dispatch", role="admin")},
    "/dashboard/workers/{name}/{action}": {
        "post": _action("dashboard_steer_worker", "Drain, lock or unlock a worker", _form({"reason": STRING}),
                        params=(path("name", "the worker"), path("action", "what to do", {
                            "type": "string", "enum": ["drain", "lock", "unlock"]})),
                        extra={"404": failure("Unknown worker or action")}),
    },
    "/dashboard/dispatch/{action}": {
        "post": _action("dashboard_steer_dispatch", "Pause or resume dispatch", _form({}),
                        params=(path("action", "what to do", {"type": "string", "enum": ["pause", "resume"]}),),
                        extra={"404": failure("Unknown action")}),
    },
    "/dashboard/batches": {
        "get": _page("dashboard_batches", "Batches, newest first", params=(
            query("team", STRING, "only this team's"),
            query("state", {"type": "string", "enum": ["queued", "running", "paused", "done", "failed", "cancelled"]},
                  "only these"),
            query("name", STRING, "names containing this"), query("before", STRING, "the previous page's last")),
            extra={"400": NOT_FOUND | {"description": "An unknown state (a page saying so)"}}),
    },
    "/dashboard/batches/actions": {
        "post": _action("dashboard_batch_actions", "One action on the ticked batches", _form({
            "ids": {"type": "array", "items": STRING}, "action": STRING, "priority": STRING}),
            extra={"404": NOT_FOUND}),
    },
    "/dashboard/batches/{batch_id}": {
        "get": _page("dashboard_batch", "One batch and its cells",
                     params=(path("batch_id", "the batch"), query("after", INTEGER, "cells after this index")),
                     extra={"400": failure("after is not a whole number"), "404": NOT_FOUND}),
    },
    "/dashboard/prompts/{prompt_id}": {
        "get": _page("dashboard_prompt", "One prompt: its run, outputs and events",
                     params=(path("prompt_id", "the prompt"),), extra={"404": failure("Unknown prompt")}),
    },
    "/dashboard/prompts/{prompt_id}/cancel": {
        "post": _action("dashboard_cancel_prompt", "Cancel a prompt", _form({}),
                        params=(path("prompt_id", "the prompt"),)),
    },
    "/dashboard/previews/{prompt_id}": {
        "get": operation("dashboard_preview", "The latest sampling preview of a running prompt", tag=TAG,
                         database=False, params=(path("prompt_id", "the prompt"),),
                         responses={"200": binary("The preview", "image/jpeg", "image/png", "image/webp"),
                                    "302": SIGN_IN, "404": failure("No preview (not running here, or not yours)")}),
    },
    "/dashboard/history": {
        "get": _page("dashboard_history", "Finished prompts, newest first", params=HISTORY_FILTERS),
    },
    "/dashboard/teams": {
        "get": _page("dashboard_teams", "Teams, keys and the audit log", role="admin",
                     params=(query("before", STRING, "audit entries older than this id"),)),
        "post": _action("dashboard_create_team", "Create a team", _form({
            "name": STRING, "share": STRING, "burst": STRING, "max_queued": STRING, "max_running": STRING},
            ("name",))),
    },
    "/dashboard/teams/{name}": {
        "post": _action("dashboard_update_team", "Change a team's share and limits", _form({
            "share": STRING, "burst": STRING, "max_queued": STRING, "max_running": STRING}),
            params=(path("name", "the team"),)),
    },
    "/dashboard/keys": {
        "post": _action("dashboard_create_key", "Create a key (its secret is shown once, on the page answered)",
                        _form({"team": STRING, "role": STRING, "label": STRING}, ("team",)),
                        extra={"200": html("The teams page with the new key's secret")}),
    },
    "/dashboard/keys/{which}/revoke": {
        "post": _action("dashboard_revoke_key", "Revoke a key", _form({}),
                        params=(path("which", "the key's id or display prefix"),),
                        extra={"404": failure("No such key")}),
    },
    "/dashboard/static/{filename}": {
        "get": operation("dashboard_static", "The dashboard's script and styles", tag=TAG, public=True,
                         database=False, params=(path("filename", "the file", STRING),),
                         responses={"200": binary("The file", "*/*"), "404": failure("Not found")}),
    },
    **_downloads(),
    "/": {
        "get": operation("editor", "ComfyUI's editor (comfy-farm[frontend]), or a page saying how to install it",
                         tag=EDITOR, public=True, database=False,
                         responses={"200": html("The editor's page"),
                                    "302": redirect("The farm needs keys and none is signed in: to the sign-in page")}),
    },
    "/favicon.ico": {
        "get": operation("favicon", "The editor's icon", tag=EDITOR, public=True, database=False,
                         responses={"200": binary("The icon", "image/x-icon", "image/vnd.microsoft.icon"),
                                    "204": answer("No editor installed")}),
    },
    "/user.css": {
        "get": operation("user_css", "The user's CSS (the farm keeps it in /userdata/user.css)", tag=EDITOR,
                         public=True, database=False,
                         responses={"200": {"description": "Empty", "content": {"text/css": {"schema": STRING}}}}),
    },
    "/templates/{filename}": {
        "get": operation("editor_template", "ComfyUI's workflow templates (comfyui-workflow-templates), or empty "
                                            "indexes", tag=EDITOR, public=True, database=False,
                         params=(path("filename", "the file", STRING),),
                         responses={"200": binary("The file (the indexes are JSON)", "*/*"),
                                    "404": failure("Not found")}),
    },
}
