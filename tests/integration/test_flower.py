"""`farm flower` on the farm's broker: with FARM_CELERY_EVENTS=1 it sees the workers and their tasks."""

from __future__ import annotations

import time

import pytest
import requests

from farm.queue.celery_app import EXECUTE_PROMPT
from tests.integration.farm_process import FarmProcess, free_port
from tests.integration.scheduler_farm import SchedulerFarm, own_redis_url, sleep_prompt
from tests.services import fresh_postgres_database, service_url

pytestmark = pytest.mark.integration


def test_flower_shows_the_farms_workers_and_tasks(tmp_path):
    pytest.importorskip("flower", reason="Flower is not installed (pip install 'comfy-farm[flower]')")
    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        farm = SchedulerFarm(tmp_path, database_url, redis_url, redis_url, celery_events=1)
        port = free_port()
        flower = FarmProcess(["flower", "--port", str(port), "--basic-auth", "ops:s3cret"], farm.env,
                             tmp_path / "flower.log", port)
        api = requests.Session()
        api.auth = ("ops", "s3cret")
        try:
            farm.start_web(wait=False)  # the worker starts alongside
            farm.start_worker("watched")
            deadline = time.monotonic() + 60
            while True:
                try:
                    if api.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, flower.output()
                time.sleep(0.2)
            prompt_id = farm.submit(sleep_prompt(20))
            assert farm.history(prompt_id)["status"]["status_str"] == "success"
            deadline = time.monotonic() + 60
            while True:
                tasks = api.get(f"http://127.0.0.1:{port}/api/tasks", timeout=10).json()
                done = [task for task in tasks.values() if task.get("name") == EXECUTE_PROMPT
                        and task.get("state") == "SUCCESS" and prompt_id in str(task.get("args"))]
                if done:
                    break
                assert time.monotonic() < deadline, (tasks, flower.output())
                time.sleep(0.5)
            assert done[0]["worker"].startswith("watched@")
            workers = api.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=30).json()
            assert any(name.startswith("watched@") for name in workers), workers
            assert requests.get(f"http://127.0.0.1:{port}/api/tasks", timeout=10).status_code == 401
        finally:
            api.close()
            flower.stop()
            farm.close()
