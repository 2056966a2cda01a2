"""Apply LoRA files to a loaded UNet and text encoders as merged weight deltas, on patched copies.

Accepted key layouts: kohya / ComfyUI (`lora_unet_*`, `lora_te_*`, `lora_te1_*`, `lora_te2_*` with
`.lora_up.weight`, `.lora_down.weight`, `.alpha`), where the UNet part may use diffusers module
names (SD1/SD2 trainers) or LDM names (SDXL trainers, `input_blocks_4_1_...`), and diffusers/PEFT
(`unet.` / `text_encoder.` / `text_encoder_2.` with `.lora_A.weight` / `.lora_B.weight`).

Invariants:
- W' = W + strength * (alpha / rank) * up @ down (alpha defaults to rank), computed in fp32 and cast
  back to W's dtype; k x k conv LoRAs (LoCon) use the same product on the flattened kernels.
- The base modules are never written to. `apply_loras` returns copies in which each patched weight
  is a new tensor and every other parameter is a new Parameter over the base's storage: memory is
  shared, but moving either module between devices leaves the other alone. The model cache can keep
  the base and key the copy by (base key, patches) (`DiffusionModel.loras` / `TextEncoders.loras`).
- A patch of strength 0 changes nothing and is not recorded; with no patch left, the inputs are
  returned as they are.
- LoRA keys that match no module are logged (ComfyUI's "lora key not loaded"), not fatal.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import torch

from farm.engine import ldm_layout
from farm.engine.checkpoints import CheckpointError, read_lora  # noqa: F401  (read_lora is public here too)
from farm.engine.types import DiffusionModel, LoraPatch, TextEncoders

log = logging.getLogger(__name__)

_SUFFIXES = (
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_mid.weight", "mid"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"), (".alpha", "alpha"),
)
# Longest first where one prefix begins another.
_PREFIXES = (
    ("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te"),
    ("model.diffusion_model.", "unet"), ("diffusion_model.", "unet"), ("unet.", "unet"),
    ("text_encoder_2.", "te2"), ("text_encoder.", "te"),
)
# Which encoder of each family a text-encoder LoRA prefix addresses.
_ENCODER_OF = {
    "sd1": {"te": "l", "te1": "l"},
    "sd2": {"te": "h", "te1": "h"},
    "sdxl": {"te": "l", "te1": "l", "te2": "g"},
    "sdxl_refiner": {"te": "g", "te2": "g"},
}


def parse_lora(sd: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Group a LoRA state dict by module: {stored name: {"up", "down", optional "alpha", "mid"}}."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    ignored = []
    for key, value in sd.items():
        for suffix, part in _SUFFIXES:
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[part] = value
                break
        else:
            ignored.append(key)
    pairs = {name: g for name, g in groups.items() if "up" in g and "down" in g}
    if not pairs:
        raise ValueError("not a LoRA: no lora_up/lora_down (or lora_A/lora_B) weight pairs found")
    if ignored:
        log.warning("LoRA: %d keys of unsupported kinds ignored (e.g. %s)", len(ignored), ignored[0])
    return pairs


def _address(name: str) -> tuple[str, str] | None:
    """('unet' | 'te' | 'te1' | 'te2', module name with '.' as '_') for a stored LoRA module name."""
    for prefix, target in _PREFIXES:
        if name.startswith(prefix):
            return target, name[len(prefix):].replace(".", "_")
    return None


def _weights(module: torch.nn.Module) -> list[str]:
    return [n[: -len(".weight")] for n, p in module.named_parameters() if n.endswith(".weight") and p.ndim >= 2]


def unet_table(unet) -> dict[str, str]:
    """LoRA module name (underscored, diffusers or LDM naming) -> diffusers module name."""
    names = _weights(unet)
    table = {n.replace(".", "_"): n for n in names}
    # unet_to_ldm renames keys and keeps values: map every diffusers name to itself to get the pairs.
    for ldm_name, name in ldm_layout.unet_to_ldm({n + ".weight": n for n in names}, prefix="").items():
        table[ldm_name.removesuffix(".weight").replace(".", "_")] = name
    return table


def text_encoder_table(encoder) -> dict[str, str]:
    """LoRA module name (kohya: `text_model_encoder_layers_0_self_attn_q_proj`) -> module name."""
    return {"text_model_" + n.removeprefix("text_model.").replace(".", "_"): n for n in _weights(encoder)}


def lora_delta(group: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """(alpha / rank) * up @ down in fp32, shaped like the weight it patches."""
    if "mid" in group:
        raise ValueError("LoCon/Tucker LoRAs with lora_mid are not supported")
    up, down = group["up"].float(), group["down"].float()
    rank = down.shape[0]
    scale = float(group["alpha"]) / rank if "alpha" in group else 1.0
    delta = up.flatten(1) @ down.flatten(1)  # linear, 1x1 conv and k x k conv (up is 1x1) alike
    if delta.numel() != math.prod(shape):
        raise ValueError(f"LoRA shape {tuple(delta.shape)} does not fit weight {tuple(shape)}")
    return delta.reshape(shape) * scale


def patched_copy(module: torch.nn.Module, deltas: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of `module` with `deltas` (param name -> fp32 delta) added; all else shares storage."""
    params = dict(module.named_parameters())
    memo = {}
    for name, p in params.items():
        data = p.data
        if name in deltas:
            data = (data.float() + deltas[name].to(data.device)).to(data.dtype)
        memo[id(p)] = torch.nn.Parameter(data, requires_grad=p.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = buffer  # buffers are swapped, not mutated, by .to(): sharing is safe
    return copy.deepcopy(module, memo)


def _as_patch(p) -> LoraPatch:
    return p if isinstance(p, LoraPatch) else LoraPatch(str(p[0]), float(p[1]))


def apply_loras(model: DiffusionModel | None, clip: TextEncoders | None, patches):
    """(model, clip) with `patches` (LoraPatch or (path, strength)) merged in; either may be None.

    One strength applies to both; LoraLoader's separate model and clip strengths are two calls,
    `apply_loras(model, None, [LoraPatch(p, s_model)])` and `apply_loras(None, clip, [LoraPatch(p, s_clip)])`.
    """
    patches = tuple(p for p in map(_as_patch, patches) if p.strength != 0)
    if not patches or (model is None and clip is None):
        return model, clip
    unet_deltas: dict[str, torch.Tensor] = {}
    clip_deltas: dict[str, dict[str, torch.Tensor]] = {}
    tables = {}
    if model is not None:
        tables["unet"] = (model.unet, unet_table(model.unet))
    if clip is not None:
        for target, name in _ENCODER_OF[clip.family].items():
            if name in clip.encoders:
                tables[target] = (clip.encoders[name], text_encoder_table(clip.encoders[name]))
    for patch in patches:
        groups = read_lora(patch.path)
        missed = []
        for stored, group in groups.items():
            address = _address(stored)
            if address is None:
                missed.append(stored)
                continue
            target, name = address
            if target not in tables:
                if (target == "unet" and model is None) or (target != "unet" and clip is None):
                    continue  # the caller asked for the other half only
                missed.append(stored)
                continue
            module, table = tables[target]
            if name not in table:
                missed.append(stored)
                continue
            param = table[name] + ".weight"
            weight = module.get_parameter(param)
            try:
                delta = patch.strength * lora_delta(group, weight.shape)
            except ValueError as exc:
                raise CheckpointError(f"{patch.path}: {stored}: {exc}") from None
            bucket = unet_deltas if target == "unet" else clip_deltas.setdefault(
                _ENCODER_OF[clip.family][target], {})
            bucket[param] = bucket[param] + delta if param in bucket else delta
        if missed:
            log.warning("LoRA %s: %d keys not loaded (e.g. %s)", patch.path, len(missed), missed[0])
    if model is not None:
        unet = patched_copy(model.unet, unet_deltas) if unet_deltas else model.unet
        model = dataclasses.replace(model, unet=unet, loras=model.loras + patches)
    if clip is not None:
        encoders = {name: patched_copy(enc, clip_deltas[name]) if name in clip_deltas else enc
                    for name, enc in clip.encoders.items()}
        clip = dataclasses.replace(clip, encoders=encoders, loras=clip.loras + patches)
    return model, clip
