"""The README's seed workflow rendered by `farm up` from a tiny checkpoint in the models folder."""

from __future__ import annotations

import io
import json

import pytest
import requests
from PIL import Image

from tests.integration.farm_process import farm_up, wait_history
from tests.workflows import seed_workflow

pytestmark = pytest.mark.integration


def render(url: str, prompt: dict) -> bytes:
    answer = requests.post(f"{url}/prompt", data=json.dumps({"prompt": prompt}), timeout=10)
    assert answer.status_code == 200, answer.text
    entry = wait_history(url, answer.json()["prompt_id"], timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    image = entry["outputs"]["9"]["images"][0]
    return requests.get(f"{url}/view", params=image, timeout=10).content


def test_seed_workflow_renders_png_deterministically(tmp_path):
    from tests.engine.tiny_checkpoints import make_sd1

    data = tmp_path / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    make_sd1(data / "models" / "checkpoints" / "tiny.safetensors", seed=11)
    with farm_up(data) as farm:
        assert requests.get(f"{farm.url}/models/checkpoints", timeout=5).json() == ["tiny.safetensors"]
        first = render(farm.url, seed_workflow(seed=123))
        png = Image.open(io.BytesIO(first))
        assert png.format == "PNG" and json.loads(png.text["prompt"]) == seed_workflow(seed=123)
        # Forget cached node outputs so the same prompt really renders again.
        requests.post(f"{farm.url}/free", data=json.dumps({"free_memory": True}), timeout=5)
        again = render(farm.url, seed_workflow(seed=123))
        assert again == first  # same seed: byte-identical PNG
        other = render(farm.url, seed_workflow(seed=124))
        assert Image.open(io.BytesIO(other)).tobytes() != png.tobytes()
        devices = requests.get(f"{farm.url}/system_stats", timeout=5).json()["devices"]
        assert devices and devices[0]["type"] == "cpu"
