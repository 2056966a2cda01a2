"""The coalescing key: prompts that differ only in seeds, prompt texts and filename prefixes share it;
any other difference (one test per field of the compatibility key) or an unsupported graph does not."""

from __future__ import annotations

import copy
import json

import pytest
from sqlalchemy import select

from farm.db.models import Prompt
from farm.graph.coalesce import coalesce_key
from tests.workflows import seed_workflow


def key(workflow: dict) -> str | None:
    return coalesce_key(workflow, ["9"])


def with_lora(workflow: dict, name: str = "style.safetensors", strength: float = 0.8) -> dict:
    workflow = copy.deepcopy(workflow)
    workflow["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": name,
                                                             "strength_model": strength, "strength_clip": strength}}
    workflow["3"]["inputs"]["model"] = ["10", 0]
    workflow["6"]["inputs"]["clip"] = ["10", 1]
    workflow["7"]["inputs"]["clip"] = ["10", 1]
    return workflow


def with_vae(workflow: dict, name: str = "vae.safetensors") -> dict:
    workflow = copy.deepcopy(workflow)
    workflow["11"] = {"class_type": "VAELoader", "inputs": {"vae_name": name}}
    workflow["8"]["inputs"]["vae"] = ["11", 0]
    return workflow


def changed(node: str, name: str, value, base: dict | None = None) -> dict:
    workflow = copy.deepcopy(base or seed_workflow())
    workflow[node]["inputs"][name] = value
    return workflow


def test_seeds_texts_and_prefixes_may_differ_within_a_group():
    base = key(seed_workflow())
    assert base is not None and base.startswith("c1:")
    assert key(seed_workflow(seed=7, prefix="shots/a")) == base
    assert key(changed("6", "text", "a red fox")) == base
    assert key(changed("7", "text", "blurry")) == base


@pytest.mark.parametrize("field, workflow", [
    ("checkpoint", seed_workflow(ckpt_name="other.safetensors")),
    ("lora", with_lora(seed_workflow(), name="other.safetensors")),
    ("lora strength", with_lora(seed_workflow(), strength=0.5)),
    ("vae", with_vae(seed_workflow(), name="other-vae.safetensors")),
    ("width", changed("5", "width", 128)),
    ("height", changed("5", "height", 128)),
    ("batch size", changed("5", "batch_size", 2)),
    ("steps", seed_workflow(steps=4)),
    ("sampler", seed_workflow(sampler="dpmpp_2m")),
    ("scheduler", seed_workflow(scheduler="karras")),
    ("cfg", changed("3", "cfg", 5.0)),
    ("denoise", changed("3", "denoise", 0.5)),
    ("a link", changed("8", "samples", ["5", 0])),
])
def test_every_other_difference_gives_another_key(field, workflow):
    reference = {"lora": with_lora(seed_workflow()), "lora strength": with_lora(seed_workflow()),
                 "vae": with_vae(seed_workflow())}.get(field, seed_workflow())
    assert key(reference) is not None and key(workflow) is not None
    assert key(workflow) != key(reference), field


def test_graphs_that_cannot_be_grouped_get_no_key():
    two_samplers = seed_workflow()
    two_samplers["12"] = copy.deepcopy(two_samplers["3"])
    image_input = seed_workflow()
    image_input["13"] = {"class_type": "LoadImage", "inputs": {"image": "a.png"}}
    from_another_latent = seed_workflow()
    from_another_latent["14"] = {"class_type": "LatentUpscaleBy", "inputs": {
        "samples": ["5", 0], "upscale_method": "nearest-exact", "scale_by": 2.0}}
    from_another_latent["3"]["inputs"]["latent_image"] = ["14", 0]
    custom = seed_workflow()
    custom["15"] = {"class_type": "MyCustomNode", "inputs": {}}
    for workflow in (two_samplers, image_input, from_another_latent, custom):
        assert key(workflow) is None
    assert coalesce_key({"1": {"class_type": "EmptyImage", "inputs": {}}}, ["1"]) is None


def test_partial_execution_targets_are_part_of_the_key():
    assert coalesce_key(seed_workflow(), ["9"]) != coalesce_key(seed_workflow(), ["8", "9"])


def test_submissions_and_sweep_cells_store_their_key(client, context):
    from farm.services import workers
    from tests.unit.test_batches import cells_of, post_batch
    from tests.unit.test_dispatch_and_history import register

    # a worker that has the checkpoint: the web validates ckpt_name against what workers report
    assert workers.report(context.database, register(context), {"model_files": {"checkpoints": ["tiny.safetensors"]}})
    answer = client.post("/prompt", data=json.dumps({"prompt": seed_workflow()}))
    assert answer.status_code == 200, answer.get_json()
    with context.database.reading() as session:
        stored = session.scalar(select(Prompt.coalesce_key).where(Prompt.prompt_id == answer.get_json()["prompt_id"]))
    assert stored == key(seed_workflow())
    seeds = post_batch(client, {"workflow": seed_workflow(), "sweep": {"3.seed": [1, 2, 3]}}).get_json()
    steps = post_batch(client, {"workflow": seed_workflow(), "sweep": {"3.steps": [2, 3]}}).get_json()
    assert {cell.coalesce_key for cell in cells_of(context, seeds["batch_id"])} == {stored}
    assert len({cell.coalesce_key for cell in cells_of(context, steps["batch_id"])}) == 2
