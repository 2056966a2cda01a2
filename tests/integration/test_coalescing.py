"""Coalescing in a real farm (`farm up --cpu`, a tiny checkpoint): prompts queued together that differ
in seeds and texts are sampled as one group, and each still gets exactly what it gets alone: its
events on its own socket, its history entry, its image, bit for bit; an interrupt or a node error
of one member leaves the others to finish."""

from __future__ import annotations

import io
import time

import pytest
import requests
from PIL import Image

from tests.integration.farm_process import farm_up, wait_history
from tests.integration.test_websocket import Socket, interrupt, of_prompt, submit, types
from tests.workflows import seed_workflow

pytestmark = pytest.mark.integration


def prompt(seed: int, text: str = "a glass bottle", steps: int = 3, prefix: str = "ComfyUI") -> dict:
    workflow = seed_workflow(seed=seed, steps=steps, size=64, prefix=prefix)
    workflow["6"]["inputs"]["text"] = text
    return workflow


def pixels(url: str, entry: dict) -> bytes:
    image = entry["outputs"]["9"]["images"][0]
    return Image.open(io.BytesIO(requests.get(f"{url}/view", params=image, timeout=30).content)).tobytes()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    from tests.engine.tiny_checkpoints import make_sd1

    data = tmp_path_factory.mktemp("coalescing") / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    make_sd1(data / "models" / "checkpoints" / "tiny.safetensors", seed=5)
    # CPU workers coalesce only when told to (exact sampling saves them nothing)
    with farm_up(data, env={"FARM_COALESCE_WAIT_MS": "0", "FARM_COALESCE_MAX": "4"}) as running:
        yield running


def queued_together(farm, prompts: list[dict], **body) -> list[str]:
    """Submit while dispatch is paused, so the worker finds them all queued (a sweep's situation)."""
    assert requests.post(f"{farm.url}/api/dispatch/pause", timeout=10).ok
    try:
        return [submit(farm, workflow, **body) for workflow in prompts]
    finally:
        assert requests.post(f"{farm.url}/api/dispatch/resume", timeout=10).ok


def test_a_group_gives_every_prompt_its_own_events_history_and_the_image_it_gets_alone(farm):
    texts = ["a glass bottle", "a red fox", "a snowy pass", "a lighthouse"]
    sockets = [Socket(farm, f"?clientId=member{index}") for index in range(4)]
    ids = []
    assert requests.post(f"{farm.url}/api/dispatch/pause", timeout=10).ok
    for index, text in enumerate(texts):
        ids.append(submit(farm, prompt(100 + index, text), client_id=f"member{index}"))
    assert requests.post(f"{farm.url}/api/dispatch/resume", timeout=10).ok
    grouped = {prompt_id: wait_history(farm.url, prompt_id, timeout=180) for prompt_id in ids}
    for index, (sock, prompt_id) in enumerate(zip(sockets, ids)):
        events = of_prompt(sock.until_done(prompt_id), prompt_id)
        assert types(events)[:2] == ["execution_start", "execution_cached"]
        assert types(events)[-2:] == ["execution_success", "executing"]
        assert "progress" in types(events) and "executed" in types(events)
        assert all(data.get("prompt_id") == prompt_id for _, data in events)  # only its own
        assert [kind for kind, _ in grouped[prompt_id]["status"]["messages"]] == [
            "execution_start", "execution_cached", "execution_success"]
        sock.close()
    assert "samples 4 prompts as one group" in farm.output()
    # Alone, one after the other: the very same pixels.
    for index, text in enumerate(texts):
        alone = wait_history(farm.url, submit(farm, prompt(100 + index, text)), timeout=120)
        assert pixels(farm.url, alone) == pixels(farm.url, grouped[ids[index]]), text


def test_interrupting_one_member_lets_the_others_finish(farm):
    sock = Socket(farm, "?clientId=watcher")
    ids = queued_together(farm, [prompt(200 + index, steps=40) for index in range(3)], client_id="watcher")
    sock.wait(lambda messages: any(kind == "progress" and data.get("prompt_id") == ids[1]
                                   for kind, data in (m for m in messages if isinstance(m, tuple))), timeout=120)
    interrupt(farm, ids[1])
    entries = {prompt_id: wait_history(farm.url, prompt_id, timeout=180) for prompt_id in ids}
    assert [entries[prompt_id]["status"]["status_str"] for prompt_id in ids] == ["success", "error", "success"]
    assert entries[ids[1]]["status"]["messages"][-1][0] == "execution_interrupted"
    sock.close()


def test_a_node_error_in_one_member_fails_that_prompt_only(farm):
    ids = queued_together(farm, [prompt(300), prompt(301, prefix="../outside"), prompt(302)])
    entries = {prompt_id: wait_history(farm.url, prompt_id, timeout=180) for prompt_id in ids}
    assert [entries[prompt_id]["status"]["status_str"] for prompt_id in ids] == ["success", "error", "success"]
    error = entries[ids[1]]["status"]["messages"][-1]
    assert error[0] == "execution_error" and error[1]["node_type"] == "SaveImage"
    deadline = time.monotonic() + 10
    while "samples 3 prompts as one group" not in farm.output():
        assert time.monotonic() < deadline
        time.sleep(0.2)
