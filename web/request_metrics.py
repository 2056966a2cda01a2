"""Counts and times every HTTP request by route template (bounded label values), method and status."""

from __future__ import annotations

import time

from flask import g, request

from farm.metrics import web_metrics


def register(app) -> None:
    metrics = web_metrics()

    @app.before_request
    def start_clock():
        g.farm_started = time.perf_counter()

    @app.after_request
    def count(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.http_requests.labels(route, request.method, str(response.status_code)).inc()
        started = g.get("farm_started")
        if started is not None:
            metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
        return response
