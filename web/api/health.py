"""GET /healthz (the process answers) and GET /readyz (it can serve: database reachable and at the
migrations' head, broker reachable), for load balancers and Kubernetes probes. Both need no key:
probes cannot send one, and they tell nothing about anyone's work."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from farm.services.health import Readiness
from web.context import farm

blueprint = Blueprint("health", __name__)
PUBLIC_PATHS = ("/healthz", "/readyz", "/api/healthz", "/api/readyz")


def _readiness() -> Readiness:
    found = current_app.extensions.get("farm_readiness")
    if found is None:
        context = farm()
        found = current_app.extensions["farm_readiness"] = Readiness(
            context.database, getattr(context.dispatcher, "sender", None), storage=context.storage)
    return found


@blueprint.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz():
    ready, checks = _readiness().check()
    if ready:
        return jsonify({"status": "ready", "checks": checks})
    return jsonify({"error": {"type": "service_unavailable", "message": "The farm is not ready",
                              "details": "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"),
                              "extra_info": {"checks": checks}}, "node_errors": {}, "status": "not ready",
                    "checks": checks}), 503
