"""A small cluster of real processes: one `farm web`, two `farm worker`s, Redis and PostgreSQL."""

from __future__ import annotations

import collections
import json
import os
import time

import pytest
import requests
from sqlalchemy import create_engine, text

from tests.integration.farm_process import FarmProcess, farm_env, free_port, stop_all, wait_history
from tests.services import fresh_postgres_database, service_url
from tests.workflows import invert_workflow

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    redis_url = service_url("redis")
    with fresh_postgres_database(service_url("database")) as database_url:
        data = tmp_path / "data"
        env = farm_env(data, broker_url=redis_url, database_url=database_url)
        FarmProcess(["db", "upgrade"], env, tmp_path / "upgrade.log").process.wait(60)
        port = free_port()
        processes = [FarmProcess(["web", "--port", str(port)], env, tmp_path / "web.log", port)]
        for name in ("alpha", "beta"):
            processes.append(FarmProcess(["worker", "--cpu", "--name", f"test-{name}-{port}"], env,
                                         tmp_path / f"{name}.log"))
        try:
            processes[0].wait_ready()
            yield processes[0].url, database_url, data
        finally:
            stop_all(processes)


def wait_for_workers(url: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(requests.get(f"{url}/system_stats", timeout=5).json()["devices"]) == count:
            return
        time.sleep(0.1)
    raise AssertionError("workers did not register")


def test_two_workers_share_the_queue_and_run_each_prompt_once(cluster):
    url, database_url, data = cluster
    wait_for_workers(url, 2)
    session = requests.Session()
    ids = [session.post(f"{url}/prompt", timeout=10,
                        data=json.dumps({"prompt": invert_workflow(color=i, size=64)})).json()["prompt_id"]
           for i in range(30)]
    entries = [wait_history(url, prompt_id) for prompt_id in ids]
    assert all(entry["status"]["status_str"] == "success" for entry in entries)
    names = [entry["outputs"]["3"]["images"][0]["filename"] for entry in entries]
    assert len(set(names)) == 30 and sorted(os.listdir(data / "output")) == sorted(names)

    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT worker, attempt FROM prompts")).all()
    engine.dispose()
    per_worker = collections.Counter(worker for worker, _ in rows)
    assert len(per_worker) == 2 and sum(per_worker.values()) == 30
    assert {attempt for _, attempt in rows} == {1}  # no prompt was dispatched twice


def test_front_prompt_runs_before_the_waiting_ones(cluster):
    url, _, _ = cluster
    wait_for_workers(url, 2)
    session = requests.Session()
    ordinary = [session.post(f"{url}/prompt", timeout=10,
                             data=json.dumps({"prompt": invert_workflow(color=i, size=512)})).json()["prompt_id"]
                for i in range(12)]
    submitted_at_ms = time.time() * 1000
    front = session.post(f"{url}/prompt", timeout=10,
                         data=json.dumps({"prompt": invert_workflow(size=8), "front": True})).json()["prompt_id"]
    entries = {prompt_id: wait_history(url, prompt_id) for prompt_id in [*ordinary, front]}

    def started(prompt_id):
        return entries[prompt_id]["status"]["messages"][0][1]["timestamp"]

    # After the front prompt arrived, only prompts already handed to a worker (at most one per
    # worker) may start before it; everything still waiting starts after it.
    overtaking = [p for p in ordinary if submitted_at_ms < started(p) < started(front)]
    assert len(overtaking) <= 2
    assert sum(started(p) > started(front) for p in ordinary) >= 1
