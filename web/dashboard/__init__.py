"""The operator's dashboard under /dashboard: server-rendered pages over the same services as the API
(roles are enforced there, never only in the page), refreshed live by a small script that listens
on the farm's own /ws and re-reads the page's main section when something changes.

Sign-in takes an API key and keeps only its SHA-256 in the session cookie (web/sessions.py); every
form carries the session's CSRF token. With auth off the dashboard is open, like the API.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta, timezone

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for

from farm.services import audit, batches, overview, prompt_views, steering, teams
from farm.services.principal import Forbidden
from farm.services.teams import key_hash
from web.auth import principal
from web.context import farm
from web.numbers import storable, whole
from web.sessions import csrf_token

blueprint = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates",
                      static_folder="static", static_url_path="/static")


@blueprint.app_context_processor
def _globals():
    return {"csrf_token": csrf_token, "who": principal}


@blueprint.before_request
def _check_csrf():
    if request.method == "POST" and request.endpoint != "dashboard.login":
        sent = request.form.get("csrf", "")
        # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500).
        if not sent or not hmac.compare_digest(sent.encode(), session.get("csrf", "").encode()):
            abort(400, "the form is out of date (CSRF check failed): reload the page and try again")


@blueprint.errorhandler(Forbidden)
def _forbidden(error: Forbidden):
    return render_template("message.html", title="Not allowed", message=str(error)), 403


@blueprint.errorhandler(batches.BatchError)
def _refused(error: batches.BatchError):
    return render_template("message.html", title=error.error.get("message", "Refused"),
                           message=error.error.get("details", "")), error.status


def _back(default: str):
    target = request.form.get("next") or default
    # only this farm's own pages: the dashboard's, or the editor at /
    return redirect(target if target.startswith("/dashboard") or target in ("/", "/?") else default, code=303)


# sign-in ----------------------------------------------------------------------------------------
@blueprint.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        key = request.form.get("key", "").strip()
        found = farm_keys().principal(key) if key else None
        if found is None:
            return render_template("login.html", error="Unknown or revoked API key", next=request.form.get("next")), 401
        session.clear()  # a new session: a new CSRF token too
        session["key_hash"] = key_hash(key)
        return _back(url_for("dashboard.home"))
    return render_template("login.html", error=None, next=request.args.get("next"))


@blueprint.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("dashboard.login"), code=303)


def farm_keys():
    from flask import current_app

    return current_app.extensions["farm_auth"]["keys"]


# pages ------------------------------------------------------------------------------------------
@blueprint.get("/")
def home():
    context = farm()
    return render_template("overview.html", data=overview.overview(context.database, context.settings, principal()))


@blueprint.get("/workers")
def workers():
    who = principal()
    who.require("admin", "the workers page")
    context = farm()
    return render_template("workers.html", workers=steering.list_workers(context.database, context.settings, _running()),
                           paused=steering.dispatch_paused(context.database))


def _running() -> dict:
    """What each worker runs now (node, step), as this process's relay last heard it."""
    from flask import current_app

    relay = current_app.extensions.get("farm_relay")
    return relay.running_nodes.by_worker() if relay is not None else {}


@blueprint.post("/workers/<name>/<action>")
def steer_worker(name: str, action: str):
    context, who = farm(), principal()
    try:
        if action == "drain":
            steering.drain(context.database, name, actor=who)
        elif action == "lock":
            steering.lock(context.database, name, request.form.get("reason") or None, actor=who)
        elif action == "unlock":
            steering.unlock(context.database, name, actor=who)
            context.dispatch_soon()
        else:
            abort(404)
    except steering.UnknownWorker:
        abort(404)
    flash(f"{name}: {action}")
    return _back(url_for("dashboard.workers"))


@blueprint.post("/dispatch/<action>")
def steer_dispatch(action: str):
    if action not in ("pause", "resume"):
        abort(404)
    context = farm()
    steering.pause_dispatch(context.database, action == "pause", actor=principal())
    if action == "resume":
        context.dispatch_soon()
    flash(f"dispatch {'paused' if action == 'pause' else 'resumed'}")
    return _back(url_for("dashboard.workers"))


@blueprint.get("/batches")
def batch_list():
    args = request.args
    page = batches.list_batches(farm().database, principal(), team=args.get("team") or None,
                                state=args.get("state") or None, name=args.get("name") or None,
                                before=args.get("before") or None, limit=50)
    return render_template("batches.html", page=page, states=batches.STATES, filters=args)


@blueprint.post("/batches/actions")
def batch_actions():
    ids = request.form.getlist("ids")
    action = request.form.get("action", "")
    priority = request.form.get("priority")
    batches.act(farm(), principal(), ids, action, _whole_or_none(priority))
    flash(f"{action}: {len(ids)} batch(es)")
    return _back(url_for("dashboard.batch_list"))


@blueprint.get("/batches/<batch_id>")
def batch_page(batch_id: str):
    context, who = farm(), principal()
    detail = batches.detail(context.database, who, batch_id)
    cells = batches.cells(context.database, who, batch_id, _whole_arg(request.args.get("after"), -1), 100)
    return render_template("batch.html", batch=detail, cells=cells)


@blueprint.post("/prompts/<prompt_id>/cancel")
def cancel_prompt(prompt_id: str):
    from farm.services import audit, jobs

    who = principal()
    if jobs.cancel(farm(), [prompt_id], team=who.scope):
        audit.record_alone(farm().database, who, "prompt.cancel", f"team:{who.scope or 'all'}",
                           {"prompt_ids": [prompt_id]})
        flash(f"cancelled {prompt_id[:8]}")
    else:
        flash(f"{prompt_id[:8]} had ended already")
    return _back(url_for("dashboard.prompt_page", prompt_id=prompt_id))


@blueprint.get("/previews/<prompt_id>")
def preview(prompt_id: str):
    """The latest sampling preview of a running prompt, as this process's relay last heard it."""
    from flask import Response, current_app

    relay = current_app.extensions.get("farm_relay")
    found = relay.previews.latest(prompt_id) if relay is not None else None
    if found is None or not principal().sees(found[0]):
        abort(404)
    return Response(found[1], mimetype=found[2], headers={"Cache-Control": "no-store"})


@blueprint.get("/prompts/<prompt_id>")
def prompt_page(prompt_id: str):
    run = prompt_views.prompt_run(farm().database, principal(), prompt_id)
    if run is None:
        abort(404)
    return render_template("prompt.html", run=run)


@blueprint.get("/history")
def history_page():
    args = request.args
    hours = {"1h": 1, "24h": 24, "7d": 168}.get(args.get("since", ""))
    since = datetime.now(timezone.utc) - timedelta(hours=hours) if hours else None
    page = prompt_views.history(farm().database, principal(), state=args.get("state") or None,
                                team=args.get("team") or None, batch_id=args.get("batch") or None,
                                worker=args.get("worker") or None, since=since, before=args.get("before") or None)
    return render_template("history.html", page=page, filters=args,
                           states=["success", "error", "interrupted", "cancelled"])


# The API's file downloads, under /dashboard so the session cookie opens them (images in pages).
def _files():
    from web.api import batches as batch_api
    from web.api import files

    blueprint.add_url_rule("/view", "view", files.view)
    blueprint.add_url_rule("/batches/<batch_id>/sheet.png", "sheet", batch_api.contact_sheet)
    blueprint.add_url_rule("/batches/<batch_id>/outputs.zip", "outputs_zip", batch_api.outputs_zip)


_files()


# teams, keys and the audit log (admins) ----------------------------------------------------------
@blueprint.get("/teams")
def teams_page():
    who = principal()
    who.require("admin", "the teams and keys page")
    return _teams_page(who, None)


def _teams_page(who, new_key: dict | None):
    database = farm().database
    return render_template("teams.html", teams=teams.list_teams(database), keys=teams.list_keys(database),
                           roles=("submit", "operator", "admin"), new_key=new_key,
                           log=audit.entries(database, before=_whole_or_none(request.args.get("before")),
                                             limit=50))


def _whole_arg(text: str | None, default: int):
    try:
        return whole(text, default)
    except ValueError:
        abort(400, f"{text!r} is not a whole number")


def _whole_or_none(text: str | None) -> int | None:
    """A whole number, or None for anything else (the form's or link's value is then left out)."""
    try:
        return whole(text or None)
    except ValueError:
        return None


def _number(name: str, cast=int):
    value = request.form.get(name, "").strip()
    if value == "":
        return None
    try:
        number = cast(value)
    except ValueError:
        number = None
    if number is None or not storable(number, whole_number=cast is int):
        abort(400, f"{name} must be a number the farm can store")
    return number


@blueprint.post("/teams")
def create_team():
    limits = {key: value for key, value in (("share", _number("share", float)), ("burst", _number("burst")),
                                             ("max_queued", _number("max_queued")),
                                             ("max_running", _number("max_running"))) if value is not None}
    try:
        teams.create_team(farm().database, request.form.get("name", "").strip(), teams.TeamLimits(**limits),
                          principal())
    except teams.TeamError as error:
        flash(str(error))
        return _back(url_for("dashboard.teams_page"))
    flash(f"team {request.form.get('name')} created")
    return _back(url_for("dashboard.teams_page"))


@blueprint.post("/teams/<name>")
def update_team(name: str):
    changes = {"share": _number("share", float) or 0.0, "burst": _number("burst"),
               "max_queued": _number("max_queued"), "max_running": _number("max_running")}
    try:
        teams.update_team(farm().database, name, changes, principal())
    except teams.TeamError as error:
        flash(str(error))
        return _back(url_for("dashboard.teams_page"))
    flash(f"team {name} changed")
    return _back(url_for("dashboard.teams_page"))


@blueprint.post("/keys")
def create_key():
    try:
        secret, made = teams.create_key(farm().database, request.form.get("team", ""),
                                        request.form.get("role", "submit"), request.form.get("label", ""),
                                        principal())
    except teams.TeamError as error:
        flash(str(error))
        return _back(url_for("dashboard.teams_page"))
    # Shown once, in this answer only (never put in a cookie or a redirect).
    return _teams_page(principal(), {"secret": secret, **made})


@blueprint.post("/keys/<which>/revoke")
def revoke_key(which: str):
    try:
        revoked = teams.revoke_key(farm().database, which, principal())
    except teams.TeamError as error:
        abort(404, str(error))
    flash(f"key {revoked['prefix']} revoked")
    return _back(url_for("dashboard.teams_page"))
