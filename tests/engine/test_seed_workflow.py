"""The seed workflow through the worker's executor, with the real model and execution caches."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from farm.engine.model_cache import ModelCache
from farm.graph.cache import ExecutionCache
from farm.graph.executor import GraphExecutor
from farm.graph.validation import validate_prompt
from farm.nodes.base import NodeEnvironment
from farm.nodes.registry import default_registry
from farm.storage import LocalStorage
from tests.engine.tiny_checkpoints import make_sd1, make_sdxl
from tests.workflows import seed_workflow


@pytest.fixture
def worker(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    make_sd1(models / "checkpoints" / "tiny.safetensors", seed=7)
    storage = LocalStorage({"output": tmp_path / "out", "input": tmp_path / "in", "temp": tmp_path / "temp"})
    env = NodeEnvironment(storage, models)
    registry = default_registry()
    cache = ModelCache(models, device="cpu")
    executor = GraphExecutor(registry, storage, env, models=cache, cache=ExecutionCache(registry, env))
    return executor, cache, storage


def run(executor, prompt, prompt_id="p"):
    validation = validate_prompt(prompt, executor.registry, executor.env)
    assert validation.ok, (validation.error, validation.node_errors)
    events = []
    result = executor.execute(prompt_id, validation.prompt, validation.outputs, {},
                              lambda event, data: events.append((event, data)))
    return result, events


def pixels(storage, result) -> np.ndarray:
    image = result.outputs["9"]["images"][0]
    with storage.open("output", image["subfolder"], image["filename"]) as handle:
        return np.asarray(Image.open(io.BytesIO(handle.read())))


def test_seed_workflow_renders_and_reuses_the_loaded_checkpoint(worker):
    executor, cache, storage = worker
    first, events = run(executor, seed_workflow(seed=1))
    assert first.status == "success", first.error
    progress = [data for event, data in events if event == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")]
    image = pixels(storage, first)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0

    second, events = run(executor, seed_workflow(seed=2), "p2")
    assert cache.loads == 1  # the checkpoint was not loaded again
    cached = next(data for event, data in events if event == "execution_cached")["nodes"]
    assert set(cached) == {"4", "5", "6", "7"}  # loader, latent and both prompts reused
    assert not np.array_equal(pixels(storage, second), image)  # another seed, another image


def test_same_seed_gives_the_same_pixels_after_caches_are_cleared(worker):
    executor, cache, storage = worker
    first, _ = run(executor, seed_workflow(seed=5, sampler="dpmpp_2m_sde", scheduler="karras"))
    executor.cache.clear()
    cache.clear()
    again, _ = run(executor, seed_workflow(seed=5, sampler="dpmpp_2m_sde", scheduler="karras"), "p2")
    assert np.array_equal(pixels(storage, first), pixels(storage, again))
    assert cache.loads == 2


def test_sdxl_seed_workflow_renders(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    make_sdxl(models / "checkpoints" / "xl.safetensors", seed=3)
    storage = LocalStorage({"output": tmp_path / "out", "input": tmp_path / "in", "temp": tmp_path / "temp"})
    env = NodeEnvironment(storage, models)
    executor = GraphExecutor(default_registry(), storage, env, models=ModelCache(models, device="cpu"))
    result, _ = run(executor, seed_workflow("xl.safetensors", steps=2, sampler="euler_ancestral"))
    assert result.status == "success", result.error


@pytest.mark.parametrize("content,cause", [
    (b"not a safetensors file at all", "CheckpointError"),
    (None, "CheckpointError"),  # an SD3-style key set: an architecture the farm does not run
])
def test_bad_checkpoints_fail_the_prompt_naming_the_node_and_the_worker_goes_on(worker, content, cause):
    executor, _, storage = worker
    folder = executor.env.models_dir / "checkpoints"
    bad = folder / "bad.safetensors"
    if content is None:
        from safetensors.torch import save_file
        import torch

        save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(4, 4)}, str(bad))
    else:
        bad.write_bytes(content)
    result, _ = run(executor, seed_workflow("bad.safetensors"))
    assert result.status == "error"
    error = result.error
    assert (error["node_id"], error["node_type"]) == ("4", "CheckpointLoaderSimple")
    assert error["exception_type"].endswith(cause) and "bad.safetensors" in error["exception_message"]
    good, _ = run(executor, seed_workflow(), "p2")
    assert good.status == "success"


def test_a_checkpoint_removed_after_validation_is_an_execution_error(worker):
    executor, _, _ = worker
    prompt = seed_workflow()
    validation = validate_prompt(prompt, executor.registry, executor.env)
    (executor.env.models_dir / "checkpoints" / "tiny.safetensors").unlink()
    result = executor.execute("p", validation.prompt, validation.outputs, {}, lambda *a: None)
    assert result.status == "error" and result.error["node_id"] == "4"
    assert "tiny.safetensors" in result.error["exception_message"]


def test_a_lora_changes_the_image_and_strength_zero_does_not(worker, tmp_path):
    from tests.engine.tiny_checkpoints import make_sd1_lora

    executor, _, storage = worker
    models = executor.env.models_dir
    (models / "loras").mkdir()
    source = make_sd1(tmp_path / "source.safetensors", seed=7)
    make_sd1_lora(models / "loras" / "style.safetensors", source, seed=9)
    plain, _ = run(executor, seed_workflow(seed=3))

    def with_lora(strength):
        prompt = seed_workflow(seed=3, prefix=f"lora{strength}")
        prompt["10"] = {"class_type": "LoraLoader", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "lora_name": "style.safetensors",
            "strength_model": strength, "strength_clip": strength}}
        prompt["3"]["inputs"]["model"] = ["10", 0]
        for node in ("6", "7"):
            prompt[node]["inputs"]["clip"] = ["10", 1]
        return run(executor, prompt, f"lora{strength}")[0]

    assert np.array_equal(pixels(storage, with_lora(0.0)), pixels(storage, plain))
    assert not np.array_equal(pixels(storage, with_lora(1.0)), pixels(storage, plain))


@pytest.mark.parametrize("mode", ["exact", "batched"])
def test_a_coalesced_group_renders_each_prompt_as_alone(worker, mode):
    """The seed workflow for four seeds and texts as one group (each prompt in its own thread, as a
    worker runs them): exact gives each prompt's own pixels; batched (one UNet call and one VAE
    decode for the group, what GPUs do) within a pixel level of them."""
    import threading

    from farm.graph.group import CoalescedGroup

    executor, _cache, storage = worker
    prompts = []
    for index, text in enumerate(["a fox", "a lighthouse", "a snowy pass", "a bottle"]):
        workflow = seed_workflow(seed=40 + index, steps=2, size=32)
        workflow["6"]["inputs"]["text"] = text
        prompts.append(validate_prompt(workflow, executor.registry, executor.env))
    alone = [pixels(storage, executor.execute(f"alone{i}", v.prompt, v.outputs, {}, lambda *_: None))
             for i, v in enumerate(prompts)]
    executor.cache.clear()  # every member samples (none is served its sampler's output from the cache)
    group = CoalescedGroup([f"g{i}" for i in range(4)], mode=mode)
    results = {}

    def member(index):
        results[index] = executor.execute(f"g{index}", prompts[index].prompt, prompts[index].outputs, {},
                                          lambda *_: None, group=group)

    threads = [threading.Thread(target=member, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert group.batches["sample"] == [4]
    assert group.batches.get("decode") == ([4] if mode == "batched" else None)
    for index in range(4):
        assert results[index].status == "success", results[index].error
        image = pixels(storage, results[index])
        if mode == "exact":
            assert np.array_equal(image, alone[index])
        else:
            assert np.abs(image.astype(int) - alone[index].astype(int)).max() <= 1
