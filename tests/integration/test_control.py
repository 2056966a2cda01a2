"""Interrupt and free reach real workers through Celery remote control while a prompt runs."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.integration.farm_process import farm_up, wait_history
from tests.workflows import invert_workflow

pytestmark = pytest.mark.integration


def long_chain(nodes: int = 1500, size: int = 1024) -> dict:
    """EmptyImage -> ImageInvert x nodes -> SaveImage: a prompt that runs for a few seconds."""
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                           "color": 0}}}
    for index in range(1, nodes + 1):
        prompt[str(index)] = {"class_type": "ImageInvert", "inputs": {"image": [str(index - 1), 0]}}
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": [str(nodes), 0], "filename_prefix": "long"}}
    return prompt


def wait_running(url: str, prompt_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prompt_id in [item[1] for item in requests.get(f"{url}/queue", timeout=5).json()["queue_running"]]:
            return
        time.sleep(0.02)
    raise AssertionError(f"{prompt_id} never ran")


def test_interrupt_stops_the_running_prompt_and_leaves_the_queue(tmp_path):
    with farm_up(tmp_path / "data") as farm:
        post = lambda body: requests.post(f"{farm.url}/prompt", data=json.dumps(body), timeout=10).json()  # noqa: E731
        long_id = post({"prompt": long_chain()})["prompt_id"]
        waiting_id = post({"prompt": invert_workflow()})["prompt_id"]
        wait_running(farm.url, long_id)
        time.sleep(0.3)  # let a few hundred nodes run
        assert requests.post(f"{farm.url}/interrupt", data=json.dumps({"prompt_id": long_id}), timeout=5).text == ""
        entry = wait_history(farm.url, long_id)
        assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
        event, data = entry["status"]["messages"][-1]
        assert event == "execution_interrupted" and data["node_type"] == "ImageInvert"
        assert 0 < len(data["executed"]) < 1500
        assert entry["outputs"] == {}
        waiting = wait_history(farm.url, waiting_id)  # a pending prompt is not touched
        assert waiting["status"]["status_str"] == "success"
        job = requests.get(f"{farm.url}/api/jobs/{long_id}", timeout=5).json()
        assert job["status"] == "cancelled"


def test_global_interrupt_and_free_reach_the_worker(tmp_path):
    with farm_up(tmp_path / "data") as farm:
        long_id = requests.post(f"{farm.url}/prompt", data=json.dumps({"prompt": long_chain()}),
                                timeout=10).json()["prompt_id"]
        wait_running(farm.url, long_id)
        assert requests.post(f"{farm.url}/api/interrupt", timeout=5).status_code == 200  # no body: everything
        assert wait_history(farm.url, long_id)["status"]["messages"][-1][0] == "execution_interrupted"
        assert requests.post(f"{farm.url}/free", data=json.dumps({"unload_models": True, "free_memory": True}),
                             timeout=5).status_code == 200
        deadline = time.monotonic() + 10
        while "freed memory (unload_models=True, free_memory=True)" not in farm.output():
            assert time.monotonic() < deadline, farm.output()
            time.sleep(0.1)
