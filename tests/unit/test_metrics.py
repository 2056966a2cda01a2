"""/metrics in Prometheus text: this process's counters and the farm's state from the database."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from farm.services import teams, workers
from farm.services.principal import LOCAL
from tests.workflows import invert_workflow


def scrape(client, headers=None) -> dict[str, list]:
    answer = client.get("/metrics", headers=headers or {})
    assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
    assert answer.mimetype == "text/plain"
    return {family.name: family.samples for family in text_string_to_metric_families(answer.get_data(as_text=True))}


def value(samples, name, **labels) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def test_metrics_count_requests_and_read_the_farms_state(client, context):
    for _ in range(3):
        client.post("/prompt", data=json.dumps({"prompt": invert_workflow()}))
    queue_ok = {"route": "/queue", "method": "GET", "status": "200"}  # (one process's counters: other tests' too)
    before = value(scrape(client)["farm_http_requests"], "farm_http_requests_total", **queue_ok)
    client.get("/queue")
    client.get("/queue")
    families = scrape(client)
    assert value(families["farm_http_requests"], "farm_http_requests_total", **queue_ok) == before + 2
    assert value(families["farm_http_request_seconds"], "farm_http_request_seconds_count", route="/prompt") >= 3
    assert value(families["farm_prompts"], "farm_prompts", state="queued", team="default") == 3
    workers.register(context.database, workers.WorkerInfo(
        name="w1", session="s", queue="q", host="h", pid=1, gpu_index=None, device_name="cpu", device_type="cpu",
        version="t"), context.settings)
    families = scrape(client)
    assert value(families["farm_worker_state"], "farm_worker_state", worker="w1") == 1
    assert value(families["farm_worker_heartbeat_age_seconds"], "farm_worker_heartbeat_age_seconds",
                 worker="w1") < 60
    assert "farm_dispatch_decisions" in families and "farm_webhook_deliveries" in families


def test_metrics_need_an_admin_key_with_auth_on(settings, sender):
    from farm.services.context import make_context
    from web import create_app

    context = make_context(settings.with_overrides(auth="on"), sender=sender)
    try:
        teams.create_team(context.database, "a", teams.TeamLimits(), LOCAL)
        artist = teams.create_key(context.database, "a", "submit", "", LOCAL)[0]
        ops = teams.create_key(context.database, "default", "admin", "", LOCAL)[0]
        client = create_app(context.settings, context=context).test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {artist}"}).status_code == 403
        assert "farm_prompts" in scrape(client, {"Authorization": f"Bearer {ops}"})
    finally:
        context.database.dispose()
