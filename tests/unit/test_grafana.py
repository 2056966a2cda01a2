"""The Grafana dashboard in deploy/ parses and uses only metrics the farm exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "comfy-farm.json"
# The families farm.services.farm_metrics reads from the database at scrape time.
STATE_FAMILIES = {"farm_prompts", "farm_worker_state", "farm_worker_heartbeat_age_seconds",
                  "farm_worker_gpu_memory_bytes", "farm_worker_prompts"}


def exposed_families() -> set[str]:
    from farm.metrics import web_metrics, worker_metrics

    names = set(STATE_FAMILIES)
    for group in (web_metrics(), worker_metrics()):
        for metric in vars(group).values():
            if hasattr(metric, "_name"):
                names.add(metric._name)
    return names


def test_every_panel_queries_a_metric_the_farm_exposes():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"] and dashboard["uid"] == "comfy-farm"
    known = exposed_families()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\bfarm_[a-z_]+", target["expr"]):
                family = re.sub(r"_(bucket|count|sum|total)$", "", name)
                assert family in known, f"{panel['title']}: {name} is not exposed"
    assert CollectorRegistry  # prometheus-client is a dependency of the farm itself
