"""Redis (broker and event bus) restarted in the middle of a 200-prompt burst: every accepted
prompt finishes once. A Redis of the test's own is killed (it keeps nothing: messages it held are
lost, and the dispatches they carried are taken back after the dispatch timeout)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from sqlalchemy import text

from tests.integration.scheduler_farm import SchedulerFarm, sleep_prompt
from tests.services import ThrowawayRedis, fresh_postgres_database, service_url

pytestmark = pytest.mark.integration


def test_redis_restarted_during_a_burst_loses_and_doubles_nothing(tmp_path):
    redis = ThrowawayRedis(tmp_path / "redis")
    with fresh_postgres_database(service_url("database")) as database_url:
        farm = SchedulerFarm(tmp_path, database_url, redis.url, redis.url, dispatch_timeout_seconds=5)
        try:
            farm.start_web(wait=False)  # the workers start alongside
            farm.start_workers("alpha", "beta")
            accepted, answers = [], []

            def burst(start: int) -> None:
                session = requests.Session()
                for value in range(start, start + 100):
                    response = session.post(f"{farm.url}/prompt", timeout=30,
                                            data=json.dumps({"prompt": sleep_prompt(20, value)}))
                    answers.append(response.status_code)
                    if response.status_code == 200:
                        accepted.append(response.json()["prompt_id"])

            submitters = [threading.Thread(target=burst, args=(start,)) for start in (0, 100)]
            for submitter in submitters:
                submitter.start()
            while len(answers) < 50:
                time.sleep(0.01)
            redis.stop()
            time.sleep(3)
            redis.start()
            for submitter in submitters:
                submitter.join()
            # The database was up all along: every submission was accepted.
            assert answers.count(200) == 200 and len(accepted) == 200
            for prompt_id in accepted:
                assert farm.history(prompt_id, timeout=180)["status"]["status_str"] == "success"
            with farm.engine.connect() as connection:
                states = dict(connection.execute(text("SELECT state, count(*) FROM prompts GROUP BY state")).all())
            assert states == {"success": 200}
        finally:
            farm.close()
            redis.close()
