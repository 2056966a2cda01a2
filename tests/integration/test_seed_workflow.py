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


@pytest.fixture(scope="module")
def seed_farm(tmp_path_factory):
    """One `farm up` for the module, with the tiny checkpoint (the tests use seeds of their own)."""
    from tests.engine.tiny_checkpoints import make_sd1

    data = tmp_path_factory.mktemp("seed") / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    make_sd1(data / "models" / "checkpoints" / "tiny.safetensors", seed=11)
    with farm_up(data) as farm:
        yield farm


def test_seed_workflow_renders_png_deterministically(seed_farm):
    farm = seed_farm
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


def test_a_seed_sweep_batch_renders_each_cell_as_its_own_prompt_would(seed_farm):
    import time
    import zipfile

    farm = seed_farm
    alone = Image.open(io.BytesIO(render(farm.url, seed_workflow(seed=8)))).tobytes()
    answer = requests.post(f"{farm.url}/api/batches", timeout=30, data=json.dumps({
        "workflow": seed_workflow(), "name": "seeds", "sweep": {"3.seed": {"range": [7, 9]}}}))
    assert answer.status_code == 201, answer.text
    batch_id = answer.json()["batch_id"]
    deadline = time.monotonic() + 180
    while (batch := requests.get(f"{farm.url}/api/batches/{batch_id}", timeout=10).json())["state"] not in (
            "done", "failed"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.25)
    assert batch["state"] == "done" and batch["counts"] == {"success": 3}
    archive = zipfile.ZipFile(io.BytesIO(requests.get(f"{farm.url}/api/batches/{batch_id}/outputs.zip",
                                                      timeout=60).content))
    images = sorted(name for name in archive.namelist() if name.endswith(".png"))
    assert [name.split("/")[0] for name in images] == ["cell-00000", "cell-00001", "cell-00002"]
    # Cell 1 is seed 8: the image the same prompt gives alone.
    assert Image.open(io.BytesIO(archive.read(images[1]))).tobytes() == alone
    assert Image.open(io.BytesIO(archive.read(images[0]))).tobytes() != alone
    sheet = Image.open(io.BytesIO(requests.get(f"{farm.url}/api/batches/{batch_id}/sheet.png", timeout=60).content))
    assert sheet.format == "PNG" and sheet.size == (2 * 256, 2 * (256 + 28))
