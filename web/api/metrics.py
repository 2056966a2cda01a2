"""GET /metrics: Prometheus text (farm.services.farm_metrics). With auth on it needs an admin key
(Prometheus sends it with `authorization: {credentials: <key>}` in its scrape config): the farm's
state names teams and workers."""

from __future__ import annotations

from flask import Blueprint, Response

from farm.services.farm_metrics import web_exposition
from web.auth import principal
from web.context import farm

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def metrics():
    principal().require("admin", "reading the farm's metrics")
    context = farm()
    body, content_type = web_exposition(context.database, context.settings)
    return Response(body, content_type=content_type)
