"""The operator's API for workers and dispatch: GET /api/workers, POST /api/workers/<name>/drain |
lock | unlock, GET /api/dispatch, POST /api/dispatch/pause | resume. Admins only: the workers serve
every team, and what they run is other teams' work."""

from __future__ import annotations

import collections

from flask import Blueprint, current_app, jsonify

from farm.services import steering
from web.auth import principal
from web.context import BadJSON, farm, json_body
from web.errors import error_response

blueprint = Blueprint("workers", __name__)


@blueprint.before_request
def admins_only():
    principal().require("admin", "the workers and dispatch API")


def _running() -> dict:
    relay = current_app.extensions.get("farm_relay")
    return relay.running_nodes.by_worker() if relay is not None else {}


def _one(name: str):
    context = farm()
    found = steering.list_workers(context.database, context.settings, _running(), name=name)
    if not found:
        return error_response(404, "not_found", "Unknown worker", name)
    return jsonify(found[0])


@blueprint.get("/api/workers")
def list_workers():
    context = farm()
    listed = steering.list_workers(context.database, context.settings, _running())
    # live workers by version: a rolling upgrade's mix at a glance
    versions = collections.Counter(worker["version"] for worker in listed if worker["state"] != "dead")
    return jsonify({"workers": listed, "versions": dict(sorted(versions.items())),
                    "dispatch": {"paused": steering.dispatch_paused(context.database)}})


@blueprint.get("/api/workers/<name>")
def get_worker(name: str):
    return _one(name)


@blueprint.post("/api/workers/<name>/<action>")
def steer_worker(name: str, action: str):
    context = farm()
    try:
        if action == "drain":
            steering.drain(context.database, name, actor=principal())
        elif action == "lock":
            try:
                body = json_body(default={})
            except BadJSON:
                body = {}
            reason = body.get("reason") if isinstance(body, dict) else None
            steering.lock(context.database, name, str(reason) if reason else None, actor=principal())
        elif action == "unlock":
            steering.unlock(context.database, name, actor=principal())
            context.dispatch_soon()
        else:
            return error_response(404, "not_found", "Unknown worker action", f"{action}: use drain, lock or unlock")
    except steering.UnknownWorker:
        return error_response(404, "not_found", "Unknown worker", name)
    return _one(name)


@blueprint.get("/api/dispatch")
def dispatch_state():
    return jsonify({"paused": steering.dispatch_paused(farm().database)})


@blueprint.post("/api/dispatch/<action>")
def steer_dispatch(action: str):
    context = farm()
    if action not in ("pause", "resume"):
        return error_response(404, "not_found", "Unknown dispatch action", f"{action}: use pause or resume")
    steering.pause_dispatch(context.database, action == "pause", actor=principal())
    if action == "resume":
        context.dispatch_soon()
    return jsonify({"paused": action == "pause"})
