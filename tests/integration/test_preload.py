"""`farm worker --preload NAME`: the checkpoint is loaded before the worker takes its first prompt,
so that prompt finds it in the model cache; an unknown name stops the worker at start."""

from __future__ import annotations

import pytest

from tests.integration.scheduler_farm import SchedulerFarm, own_redis_url
from tests.services import fresh_postgres_database, service_url
from tests.workflows import seed_workflow

pytestmark = pytest.mark.integration


def test_a_preloaded_checkpoint_is_in_the_cache_before_the_first_prompt(tmp_path):
    from tests.engine.tiny_checkpoints import make_sd1

    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        farm = SchedulerFarm(tmp_path, database_url, redis_url, redis_url)
        (farm.data / "models" / "checkpoints").mkdir(parents=True)
        make_sd1(farm.data / "models" / "checkpoints" / "tiny.safetensors", seed=3)
        try:
            farm.start_web(wait=False)  # the worker starts alongside
            farm.start_worker("eager", preload="tiny.safetensors")
            worker = farm.http.get(f"{farm.url}/api/workers/eager", timeout=10).json()
            assert "checkpoints/tiny.safetensors" in [model["file"] for model in worker["loaded_models"]]
            assert worker["prompts_done"] == 0
            prompt_id = farm.submit(seed_workflow(steps=1, size=32))
            assert farm.history(prompt_id)["status"]["status_str"] == "success"
            log = farm.workers["eager"].output()
            assert "preloaded tiny.safetensors" in log and "MB/s" in log
        finally:
            farm.close()


def test_an_unknown_preload_name_stops_the_worker_at_start(tmp_path, capsys):
    from farm.cli import main

    assert main(["worker", "--cpu", "--data-dir", str(tmp_path), "--models-dir", str(tmp_path / "models"),
                 "--preload", "missing.safetensors,../escape.safetensors"]) == 2
    error = capsys.readouterr().err
    assert "--preload: no such checkpoint" in error and "missing.safetensors, ../escape.safetensors" in error
