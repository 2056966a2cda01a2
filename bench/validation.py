"""Prompt validation speed in the web process (no torch): prompts validated per second.

Measures `farm.graph.validation.validate_prompt` on API-format prompts parsed from JSON each
time (as a request body is), for: the 3-node and 7-node model-free workflows of
bench/overhead.py, a 500-node graph (a chain of image nodes with side branches), and ComfyUI's
default text-to-image workflow (the "seed" workflow) when its node classes are registered.
Prints one JSON object; run: `.venv/bin/python bench/validation.py [--seconds S]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import overhead  # noqa: E402  (the workflows of the overhead benchmark)

from farm.graph.validation import validate_prompt  # noqa: E402
from farm.nodes.base import NodeEnvironment  # noqa: E402
from farm.nodes.registry import default_registry  # noqa: E402
from farm.storage import LocalStorage  # noqa: E402

SEED_WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def graph_500() -> dict:
    """500 nodes: a chain of inverts and scales, with a blend every tenth node and 5 outputs."""
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}}
    for index in range(1, 495):
        previous = [str(index - 1), 0]
        if index % 10 == 0:
            node = {"class_type": "ImageBlend", "inputs": {"image1": previous, "image2": [str(index - 5), 0],
                                                            "blend_factor": 0.5, "blend_mode": "multiply"}}
        elif index % 3 == 0:
            node = {"class_type": "ImageScaleBy", "inputs": {"image": previous, "upscale_method": "bilinear",
                                                              "scale_by": 1.0}}
        else:
            node = {"class_type": "ImageInvert", "inputs": {"image": previous}}
        prompt[str(index)] = node
    for output in range(5):
        prompt[f"out{output}"] = {"class_type": "SaveImage", "inputs": {"images": [str(494 - output * 7), 0],
                                                                       "filename_prefix": f"b{output}"}}
    return prompt


def rate(body: str, registry, env, seconds: float) -> dict:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        result = validate_prompt(json.loads(body)["prompt"], registry, env)
        if not result.ok:
            raise SystemExit(f"bench: the workflow does not validate: {result.error} {result.node_errors}")
        count += 1
    elapsed = time.perf_counter() - started
    return {"prompts_per_s": round(count / elapsed, 1), "ms_per_prompt": round(1000 * elapsed / count, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per workflow (default 3)")
    args = parser.parse_args()
    registry = default_registry()
    folder = tempfile.mkdtemp()
    env = NodeEnvironment(LocalStorage({k: os.path.join(folder, k) for k in ("output", "input", "temp")}),
                          os.path.join(folder, "models"))
    workflows = {"model_free_3": overhead.workflow_a(), "model_free_7": overhead.workflow_b(),
                 "graph_500": graph_500()}
    results = {}
    for name, prompt in workflows.items():
        results[name] = {"nodes": len(prompt), **rate(json.dumps({"prompt": prompt}), registry, env, args.seconds)}
    missing = sorted({node["class_type"] for node in SEED_WORKFLOW.values()} - set(registry))
    if missing:
        results["seed_7"] = {"nodes": 7, "unavailable": f"node classes not registered yet: {', '.join(missing)}"}
    else:
        os.makedirs(os.path.join(folder, "models", "checkpoints"), exist_ok=True)
        open(os.path.join(folder, "models", "checkpoints", "model.safetensors"), "wb").close()
        results["seed_7"] = {"nodes": 7, **rate(json.dumps({"prompt": SEED_WORKFLOW}), registry, env, args.seconds)}
    print(json.dumps({"validation": results, "python": platform.python_version(), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
