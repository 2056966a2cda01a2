"""A prompt that finds the output storage full (a real, full tmpfs) is not failed: it goes back
to the queue, its worker waits, and it succeeds once the storage has room, with one set of outputs."""

from __future__ import annotations

import json
import os
import time

import pytest
import requests

from tests.integration.farm_process import farm_up, wait_history
from tests.services import fill, small_storage

pytestmark = pytest.mark.integration

INVERT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 7}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "full"}}}


def test_a_prompt_that_finds_the_storage_full_waits_and_succeeds_once_it_has_room(tmp_path):
    data = tmp_path / "data"
    with small_storage(data / "output", 1) as mounted:
        if not mounted:
            pytest.skip("could not mount a tmpfs for the output folder (needs root)")
        with farm_up(data) as farm:
            filler = fill(data / "output")
            answer = requests.post(f"{farm.url}/prompt", data=json.dumps({"prompt": INVERT}), timeout=10)
            assert answer.status_code == 200, answer.text
            prompt_id = answer.json()["prompt_id"]
            deadline = time.monotonic() + 60
            while "output storage full" not in farm.output():
                assert time.monotonic() < deadline, farm.output()
                time.sleep(0.1)
            assert requests.get(f"{farm.url}/history/{prompt_id}", timeout=10).json() == {}  # not ended
            filler.unlink()
            entry = wait_history(farm.url, prompt_id, timeout=90)
            assert entry["status"]["status_str"] == "success", entry["status"]
            saved = [image["filename"] for image in entry["outputs"]["3"]["images"]]
            assert sorted(os.listdir(data / "output")) == saved  # nothing left by the attempt that failed
