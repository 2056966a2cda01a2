"""Loader nodes: checkpoints, VAEs, LoRAs and CLIPSetLastLayer, backed by the worker's model cache.

A model combo value is a path relative to its folder under the models directory, as the web
lists it. It is resolved on the worker and refused (ValueError naming the input) when it escapes
the folder, through "..", an absolute path or a symlink, so a prompt cannot load arbitrary files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from farm.nodes.base import Node, NodeOutput

LORA_DESCRIPTION = (
    "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as "
    "applying styles. Multiple LoRA nodes can be linked together."
)
LORA_OUTPUT_TOOLTIPS = ("The modified diffusion model.", "The modified CLIP model.")


def model_cache(ctx):
    """The worker's model cache from the run context (there is none in the web)."""
    models = getattr(ctx, "models", None)
    if models is None:
        raise RuntimeError("this node needs a worker's model cache, and this run has none")
    return models


def model_path(ctx, folder: str, value: str, input_name: str) -> Path:
    """The absolute path of combo value `value` in models folder `folder`, checked to stay inside."""
    root = Path(model_cache(ctx).models_dir) / folder
    path = (root / value).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{input_name}: {value!r} is outside the {folder} folder")
    if not path.is_file():
        raise FileNotFoundError(f"{input_name}: no such file in the {folder} folder: {value}")
    return path


def use_components(ctx, *components) -> None:
    """Tell the model cache that the running prompt computes with these MODEL/CLIP/VAE values, so
    they are on the device and stay there; values that came from the execution cache may have
    been moved to host RAM since they were loaded."""
    models = getattr(ctx, "models", None)
    if models is not None and hasattr(models, "use"):
        models.use(*components)


class CheckpointLoaderSimple(Node):
    DISPLAY_NAME = "Load Checkpoint"
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents."
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "The model used for denoising latents.",
        "The CLIP model used for encoding text prompts.",
        "The VAE model used for encoding and decoding images to and from latent space.",
    )

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "ckpt_name": [env.model_files("checkpoints"), {"tooltip": "The name of the checkpoint (model) to load."}],
        }}

    def run(self, ctx, ckpt_name):
        path = model_path(ctx, "checkpoints", ckpt_name, "ckpt_name")
        model, clip, vae = model_cache(ctx).checkpoint(str(path))
        return NodeOutput(values=(model, clip, vae))


class VAELoader(Node):
    DISPLAY_NAME = "Load VAE"
    CATEGORY = "loaders"
    RETURN_TYPES = ("VAE",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"vae_name": [env.model_files("vae")]}}

    def run(self, ctx, vae_name):
        path = model_path(ctx, "vae", vae_name, "vae_name")
        return NodeOutput(values=(model_cache(ctx).vae(str(path)),))


def _strength(tooltip: str) -> list:
    return ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01, "tooltip": tooltip}]


class LoraLoader(Node):
    DISPLAY_NAME = "Load LoRA"
    CATEGORY = "loaders"
    DESCRIPTION = LORA_DESCRIPTION
    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = LORA_OUTPUT_TOOLTIPS

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "model": ["MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}],
            "lora_name": [env.model_files("loras"), {"tooltip": "The name of the LoRA."}],
            "strength_model": _strength("How strongly to modify the diffusion model. This value can be negative."),
            "strength_clip": _strength("How strongly to modify the CLIP model. This value can be negative."),
        }}

    def run(self, ctx, model, clip, lora_name, strength_model, strength_clip):
        if strength_model == 0 and strength_clip == 0:
            return NodeOutput(values=(model, clip))
        path = str(model_path(ctx, "loras", lora_name, "lora_name"))
        return NodeOutput(values=apply_lora(ctx, model, clip, path, strength_model, strength_clip))


def apply_lora(ctx, model, clip, path: str, strength_model: float, strength_clip: float) -> tuple:
    """(model, clip) with the LoRA at `path`; each side has its own strength, so each is its own
    model-cache entry (a side with strength 0, or absent, is passed through)."""
    from farm.engine.types import LoraPatch

    models = model_cache(ctx)
    if model is not None and strength_model != 0:
        model, _ = models.with_loras(model, None, [LoraPatch(path, strength_model)])
    if clip is not None and strength_clip != 0:
        _, patched = models.with_loras(None, clip, [LoraPatch(path, strength_clip)])
        # The cache knows patched encoders by their weights alone; the clip-skip setting (a
        # CLIPSetLastLayer before this node) belongs to the input and must carry over.
        if getattr(patched, "layer", None) != getattr(clip, "layer", None):
            patched = dataclasses.replace(patched, layer=clip.layer)
        clip = patched
    return model, clip


class LoraLoaderModelOnly(Node):
    # ComfyUI derives this node from LoraLoader, so it carries LoraLoader's description and both of
    # its output tooltips although it has one output; /object_info shows them that way.
    CATEGORY = "loaders"
    DESCRIPTION = LORA_DESCRIPTION
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = LORA_OUTPUT_TOOLTIPS

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "model": ["MODEL"],
            "lora_name": [env.model_files("loras")],
            "strength_model": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}],
        }}

    def run(self, ctx, model, lora_name, strength_model):
        if strength_model == 0:
            return NodeOutput(values=(model,))
        path = str(model_path(ctx, "loras", lora_name, "lora_name"))
        model, _ = apply_lora(ctx, model, None, path, strength_model, 0)
        return NodeOutput(values=(model,))


class CLIPSetLastLayer(Node):
    DISPLAY_NAME = "CLIP Set Last Layer"
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "clip": ["CLIP"],
            "stop_at_clip_layer": ["INT", {"default": -1, "min": -24, "max": -1, "step": 1}],
        }}

    def run(self, ctx, clip, stop_at_clip_layer):
        if clip is None:
            raise ValueError("clip input is invalid: None")
        # A copy that shares the encoders: the input CLIP may feed other nodes unchanged.
        return NodeOutput(values=(dataclasses.replace(clip, layer=stop_at_clip_layer),))


NODES = (CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly, CLIPSetLastLayer)
