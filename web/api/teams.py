"""Teams, keys and the audit log over HTTP: GET /api/me; /api/teams (and a team's webhook secret),
/api/keys, /api/audit (admins; others see their own team only)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from farm.services import audit, teams
from web.auth import auth_enabled, principal
from web.context import BadJSON, farm, json_body
from web.errors import error_response
from web.numbers import INT64, storable, whole

blueprint = Blueprint("teams", __name__)

TEAM_FIELDS = {"share": float, "burst": int, "max_queued": int, "max_running": int, "max_priority": int}


def _object_body() -> dict:
    body = json_body()
    if not isinstance(body, dict):
        raise BadJSON("the request body must be a JSON object")
    return body


def _limits(body: dict) -> dict:
    """The team settings in `body`, typed; ValueError names a bad one."""
    values = {}
    if "webhook" in body:
        if body["webhook"] is not None and not isinstance(body["webhook"], str):
            raise ValueError("webhook must be an http(s) URL or null")
        values["webhook"] = body["webhook"] or None
    for name, cast in TEAM_FIELDS.items():
        if name in body:
            value = body[name]
            if value is None and name in ("burst", "max_queued", "max_running"):
                values[name] = None
                continue
            if not storable(value, whole_number=cast is int):
                raise ValueError(f"{name} must be a {'finite number' if cast is float else 'whole number'} the "
                                 f"farm can store, got {value!r}")
            values[name] = cast(value)
    return values


def _refused(exception: Exception):
    return error_response(400, "invalid_request", str(exception))


@blueprint.get("/api/me")
def me():
    who = principal()
    return jsonify({"team": who.team, "role": who.role, "actor": who.actor, "auth": auth_enabled(farm().settings)})


@blueprint.get("/api/teams")
def list_teams():
    who = principal()
    found = teams.list_teams(farm().database)
    return jsonify({"teams": [team for team in found if who.sees(team["name"])]})


@blueprint.post("/api/teams")
def create_team():
    who = principal()
    who.require("admin", "creating teams")
    body = _object_body()
    try:
        created = teams.create_team(farm().database, str(body.get("name", "")), teams.TeamLimits(**_limits(body)), who)
    except (ValueError, teams.TeamError) as exception:
        return _refused(exception)
    return jsonify(created), 201


@blueprint.patch("/api/teams/<name>")
def update_team(name: str):
    who = principal()
    who.require("admin", "changing a team's share and limits")
    body = _object_body()
    unknown = set(body) - set(TEAM_FIELDS) - {"webhook"}
    if unknown:
        return _refused(ValueError(f"unknown team settings: {sorted(unknown)}"))
    try:
        return jsonify(teams.update_team(farm().database, name, _limits(body), who))
    except (ValueError, teams.TeamError) as exception:
        return _refused(exception)


@blueprint.get("/api/teams/<name>/webhook-secret")
def team_webhook_secret(name: str):
    principal().require("admin", "reading a team's webhook secret")
    try:
        return jsonify({"team": name, "secret": teams.webhook_secret(farm().database, name)})
    except teams.TeamError as exception:
        return error_response(404, "not_found", str(exception))


@blueprint.get("/api/keys")
def list_keys():
    who = principal()
    who.require("admin", "listing keys")
    return jsonify({"keys": teams.list_keys(farm().database, request.args.get("team") or None,
                                            include_revoked=request.args.get("revoked") in ("1", "true"))})


@blueprint.post("/api/keys")
def create_key():
    who = principal()
    who.require("admin", "creating keys")
    body = _object_body()
    try:
        secret, key = teams.create_key(farm().database, str(body.get("team", "")), str(body.get("role", "submit")),
                                       str(body.get("label", "")), who)
    except teams.TeamError as exception:
        return _refused(exception)
    return jsonify({**key, "key": secret}), 201


@blueprint.post("/api/keys/<which>/revoke")
def revoke_key(which: str):
    who = principal()
    who.require("admin", "revoking keys")
    if _beyond_any_id(which):
        return error_response(404, "not_found", f"no key {which!r}")
    try:
        return jsonify(teams.revoke_key(farm().database, which, who))
    except teams.TeamError as exception:
        return error_response(404, "not_found", str(exception))


def _beyond_any_id(text: str) -> bool:
    """A number no key's id can be (SQLite cannot even bind it)."""
    try:
        return abs(int(text)) > INT64
    except ValueError:
        return False


@blueprint.get("/api/audit")
def audit_log():
    principal().require("admin", "reading the audit log")
    try:
        before = whole(request.args.get("before") or None)
        limit = whole(request.args.get("limit"), 100)
    except ValueError:
        return error_response(400, "invalid_query", "before and limit must be whole numbers (within ±2**63)")
    return jsonify(audit.entries(farm().database, before=before, limit=limit, action=request.args.get("action"),
                                 team=request.args.get("team")))
