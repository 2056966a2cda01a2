"""Metrics from real processes: two gunicorn web processes add up on /metrics (multiprocess mode),
and a worker serves what it ran on its own port."""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.farm_process import free_port
from tests.integration.scheduler_farm import SchedulerFarm, own_redis_url, sleep_prompt
from tests.services import fresh_postgres_database, service_url

pytestmark = pytest.mark.integration


def samples(url: str) -> list:
    text = requests.get(url, timeout=10).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def total(found, name, **labels) -> float:
    return sum(s.value for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_web_processes_add_up_and_a_worker_serves_its_own(tmp_path):
    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        port = free_port()
        farm = SchedulerFarm(tmp_path, database_url, redis_url, redis_url, web_processes=2,
                             worker_metrics_port=port)
        try:
            farm.start_web()
            session = requests.Session()
            for _ in range(40):  # kept-alive and fresh connections: both gunicorn workers serve some
                requests.get(f"{farm.url}/queue", timeout=10)
                session.get(f"{farm.url}/queue", timeout=10)
            session.close()  # a kept-alive connection would hold the web's stop ~2 s
            found = samples(f"{farm.url}/metrics")
            assert total(found, "farm_http_requests_total", route="/queue", status="200") == 80
            # Multiprocess mode is on: each gunicorn process that served writes its counters to a
            # file there (how many served is the kernel's choice), and /metrics sums the files.
            assert list((farm.data / "metrics").glob("web-*/counter_*.db"))
            farm.start_worker("measured")
            prompt_id = farm.submit(sleep_prompt(50))
            assert farm.history(prompt_id)["status"]["status_str"] == "success"
            deadline = time.monotonic() + 10
            while True:
                worker = samples(f"http://127.0.0.1:{port}/metrics")
                if total(worker, "farm_prompts_finished_total", team="default", state="success") >= 1:
                    break
                assert time.monotonic() < deadline, worker
                time.sleep(0.1)
            assert total(worker, "farm_execution_seconds_count", team="default", status="success") >= 1
            assert total(worker, "farm_node_seconds_count", node_class="Sleep") >= 1
            assert total(worker, "farm_node_seconds_sum", node_class="Sleep") >= 0.05
            assert total(worker, "farm_queue_wait_seconds_count", team="default") >= 1
            # The containers' health check asks the same port.
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            web = samples(f"{farm.url}/metrics")
            assert total(web, "farm_worker_state", worker="measured") == 1
        finally:
            farm.close()
