"""kill -9 of a worker in the middle of a prompt, twenty times (two workers taking turns, each
kill landing on an attempt the killed process had started), on Redis and on RabbitMQ: every
prompt ends once, with one history entry and one set of outputs (what killed attempts saved is
removed by the attempt that follows them)."""

from __future__ import annotations

import os
import random
import time

import pytest
from sqlalchemy import text

from tests.integration.scheduler_farm import SchedulerFarm, own_redis_url
from tests.services import fresh_postgres_database, service_url

pytestmark = pytest.mark.integration

KILLS = 20


def save_then_sleep(ms: int, color: int) -> dict:
    """Saves an image first, then sleeps: a kill during the sleep leaves that attempt's image."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kill"}},
            "3": {"class_type": "Sleep", "inputs": {"value": color, "ms": ms}},
            "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_twenty_kills_in_a_row_lose_nothing_and_double_nothing(tmp_path, broker):
    rng = random.Random(7)
    events = own_redis_url()
    broker_url = events if broker == "redis" else service_url("rabbitmq")
    with fresh_postgres_database(service_url("database")) as database_url:
        # The same workers are killed over and over: they must not lock themselves for it here.
        farm = SchedulerFarm(tmp_path, database_url, broker_url, events, max_attempts=KILLS + 10,
                             lock_after_failures=0)
        try:
            farm.start_web()
            ids = [farm.submit(save_then_sleep(rng.randint(400, 1500), color)) for color in range(KILLS)]
            # Two victims take turns: while one is killed, the other is starting again (a worker
            # start takes seconds), so the 20 kills take half as long as one victim's would.
            victims = ["victim-1", "victim-2"]
            for victim in victims:
                farm.start_worker(victim, wait=False)
            kills, killed = 0, set()
            while kills < KILLS:
                victim = victims[kills % len(victims)]
                deadline = time.monotonic() + 90
                while True:
                    # The attempt the last kill cut short stays `running` until it is reaped: wait
                    # for an attempt this worker process started, so that every kill lands mid-prompt.
                    with farm.engine.connect() as connection:
                        running = {tuple(row) for row in connection.execute(text(
                            "SELECT prompt_id, attempt FROM prompts WHERE state = 'running' AND worker = :victim"),
                            {"victim": victim})} - killed
                        left = connection.execute(text(
                            "SELECT count(*) FROM prompts WHERE state IN ('queued', 'dispatched', 'running')")).scalar()
                    if running or not left:
                        break
                    assert time.monotonic() < deadline, farm.logs()
                    time.sleep(0.02)
                if not left:
                    break
                time.sleep(rng.uniform(0.05, 0.3))  # the prompts sleep 400 ms or more after their start
                farm.kill_worker(victim)
                killed |= running
                kills += 1
                farm.start_worker(victim, wait=False)
            # Two survivors help the victims finish what is left (the prompts sleep; one worker
            # would take about as long again as the whole loop).
            farm.start_workers("survivor-1", "survivor-2")
            entries = {prompt_id: farm.history(prompt_id, timeout=120) for prompt_id in ids}
            assert kills == KILLS  # every kill cut a started attempt short
            assert all(entry["status"]["status_str"] == "success" for entry in entries.values())
            with farm.engine.connect() as connection:
                rows = connection.execute(text("SELECT state, attempt FROM prompts")).all()
            assert len(rows) == KILLS and {state for state, _ in rows} == {"success"}
            assert max(attempt for _, attempt in rows) > 1  # some prompt was killed and run again
            saved = [entry["outputs"]["2"]["images"][0]["filename"] for entry in entries.values()]
            assert len(set(saved)) == KILLS
            assert sorted(os.listdir(farm.data / "output")) == sorted(saved)  # one set of outputs each
        finally:
            farm.close()
