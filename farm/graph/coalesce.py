"""Which prompts may be sampled together in one GPU batch: the coalescing key of a prompt graph.

Two prompts with the same key are the same graph (node ids, classes, links, every input) except
for per-sample inputs: sampler seeds, prompt texts and output filename prefixes. Such prompts
share the checkpoint, LoRAs and their strengths, VAE, latent size and batch, steps, sampler,
scheduler, cfg and denoise, which is what sampling them as one batch needs.

Only graphs built from the nodes below, with exactly one KSampler fed by an EmptyLatentImage, get
a key; any other graph (image inputs, inpainting, several samplers, custom nodes) gets None and
runs alone, as it always did.
"""

from __future__ import annotations

import hashlib
import json

from farm.graph.links import is_link

VERSION = "c1"
SAMPLERS = {"KSampler": "seed"}  # KSamplerAdvanced's step windows and noise switch: not grouped
# Inputs that may differ between the members of a group, by node class.
PER_SAMPLE = {
    **{name: {seed} for name, seed in SAMPLERS.items()},
    "CLIPTextEncode": {"text"},
    "CLIPTextEncodeSDXL": {"text_g", "text_l"},
    "CLIPTextEncodeSDXLRefiner": {"text"},
    "SaveImage": {"filename_prefix"},
    "PreviewImage": set(),
}
# Nodes whose inputs must all be equal within a group.
SHARED = {
    "CheckpointLoaderSimple", "VAELoader", "LoraLoader", "LoraLoaderModelOnly", "CLIPSetLastLayer",
    "ConditioningCombine", "ConditioningAverage", "ConditioningConcat", "ConditioningSetArea", "ConditioningZeroOut",
    "EmptyLatentImage", "VAEDecode", "VAEDecodeTiled", "ImageInvert", "ImageScale", "ImageScaleBy",
}
MASK = "\x00per-sample"


def coalesce_key(prompt: dict, outputs_to_execute: list[str] | None = None) -> str | None:
    """The key of a validated API-format prompt, or None when it must run alone."""
    samplers = [node_id for node_id, node in prompt.items() if node.get("class_type") in SAMPLERS]
    if len(samplers) != 1:
        return None
    latent = prompt[samplers[0]].get("inputs", {}).get("latent_image")
    if not is_link(latent) or prompt.get(str(latent[0]), {}).get("class_type") != "EmptyLatentImage":
        return None
    shape = {}
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        if class_type not in SHARED and class_type not in PER_SAMPLE:
            return None
        varying = PER_SAMPLE.get(class_type, set())
        inputs = {name: (MASK if name in varying and not is_link(value) else value)
                  for name, value in (node.get("inputs") or {}).items()}
        shape[node_id] = [class_type, inputs]
    canonical = json.dumps([shape, sorted(outputs_to_execute or [])], sort_keys=True, separators=(",", ":"))
    return f"{VERSION}:{hashlib.sha256(canonical.encode()).hexdigest()[:40]}"


def only_per_sample(prompt: dict, paths) -> bool:
    """Whether every "node.input" path (a sweep's axes) names a per-sample input of `prompt`: then
    every cell of the sweep has the key of any one of them."""
    for path in paths:
        node_id, _, name = str(path).partition(".")
        if name not in PER_SAMPLE.get(prompt.get(node_id, {}).get("class_type"), ()):
            return False
    return True
