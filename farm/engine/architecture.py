"""Work out what a single-file checkpoint holds, from its key names and tensor shapes alone.

Nothing here downloads or reads a config from anywhere: the family (sd1, sd2, sdxl,
sdxl_refiner), the prediction type and the constructor arguments of the UNet, the VAE and each text
encoder are inferred from the state dict (spec §1.4). What shapes cannot tell is fixed by rule:
- UNet heads: a 1x1-conv `proj_in` means 8 heads (SD1); a linear one means 64-dim heads (SD2/SDXL).
- CLIP heads are 64-dim; `hidden_act` is quick_gelu for OpenAI CLIP-L, gelu for OpenCLIP.
- SD2 prediction: v when the population std of the last output block's first `norm1.bias` is
  above 0.09 (ComfyUI's guess); SDXL: v when the file has a `v_pred` key; SD1: eps.
A file may override any of it with a JSON `farm.arch` entry in its safetensors `__metadata__`:
`{"family": .., "prediction": .., "unet": {..}, "vae": {..}, "clip_l"|"clip_h"|"clip_g": {..}}`,
each dict merged over the inferred constructor kwargs (tiny test models with odd head sizes use it).
Functions take a mapping of key -> tensor (mmapped: only `.shape` is read, except the one bias the
SD2 guess needs) and raise ArchitectureError with a message fit for the user.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Mapping

from farm.engine import ldm_layout as L

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")
VAE_SCALE = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}
METADATA_KEY = "farm.arch"
SDXL_TIME_EMBED_DIM = 256  # each of the 6 (base) or 5 (refiner) size/crop/score numbers

# Marker substrings of architectures we recognise but do not run, checked before anything else so
# the error names the real model instead of "no UNet found".
_UNSUPPORTED_MARKERS = (
    ("joint_blocks.", "SD3 / SD3.5 (MMDiT)"),
    ("double_blocks.", "Flux"),
    ("double_layers.", "AuraFlow"),
    ("clip_txt_mapper.", "Stable Cascade"),
    ("adaln_single.", "a PixArt-style diffusion transformer"),
)


class ArchitectureError(ValueError):
    """The state dict is not a checkpoint we can build, and why."""


@dataclasses.dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder: where its keys live and how to build it."""

    prefix: str  # e.g. "cond_stage_model.transformer." or "conditioner.embedders.1.model."
    open_clip: bool  # OpenCLIP layout (in_proj, resblocks) rather than HF CLIP names
    with_projection: bool  # build CLIPTextModelWithProjection
    config: dict  # CLIPTextConfig kwargs


@dataclasses.dataclass(frozen=True)
class Architecture:
    family: str
    prediction: str  # "eps" | "v"
    unet: dict | None  # UNet2DConditionModel kwargs
    vae: dict | None  # AutoencoderKL kwargs
    text_encoders: dict[str, TextEncoderSpec]  # "l" / "h" / "g"


def read_overrides(metadata: Mapping[str, str] | None) -> dict:
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ArchitectureError(f"metadata {METADATA_KEY!r} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ArchitectureError(f"metadata {METADATA_KEY!r} must be a JSON object")
    return value


def describe_unknown(sd: Mapping) -> str:
    """A phrase naming what a file without a supported UNet seems to be."""
    keys = list(sd)
    if any(k.startswith("control_model.") for k in keys):
        return "a ControlNet (load it with ControlNetLoader)"
    if any(k.startswith(("lora_unet_", "lora_te", "lora_")) or ".lora_" in k or ".lora_A." in k for k in keys):
        return "a LoRA (load it with LoraLoader)"
    if any(k.startswith(("encoder.down.", "first_stage_model.", "encoder.down_blocks.")) for k in keys):
        return "a VAE (load it with VAELoader)"
    if any(k.startswith(("down_blocks.", "unet.down_blocks.")) for k in keys):
        return "a diffusers-format UNet, not a single-file checkpoint"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "a diffusion model of an unknown architecture"
    return "not a diffusion checkpoint (no known model keys)"


def detect(sd: Mapping, metadata: Mapping[str, str] | None = None) -> Architecture:
    """The full architecture of a single-file checkpoint."""
    overrides = read_overrides(metadata)
    family = overrides.get("family") or detect_family(sd)
    if family not in FAMILIES:
        raise ArchitectureError(f"detected {family}, which is not supported (supported: SD1.x, SD2.x, SDXL)")
    unet = {**infer_unet_config(sd, family), **overrides.get("unet", {})}
    prediction = overrides.get("prediction") or guess_prediction(sd, family)
    if family == "sd2" and prediction == "v":
        unet.setdefault("upcast_attention", True)  # as in the SD2.x 768-v diffusers config
    vae = None
    if L.VAE_PREFIX + "encoder.conv_in.weight" in sd:
        vae = {**infer_vae_config(sd, L.VAE_PREFIX, family), **overrides.get("vae", {})}
    encoders = {}
    for name, prefix, open_clip in ENCODER_SLOTS[family]:
        spec = infer_text_encoder(sd, prefix, open_clip)
        if spec is not None:
            config = {**spec.config, **overrides.get(f"clip_{name}", {})}
            encoders[name] = dataclasses.replace(spec, config=config)
    return Architecture(family, prediction, unet, vae, encoders)


ENCODER_SLOTS = {
    "sd1": [("l", L.SD1_CLIP_PREFIX, False)],
    "sd2": [("h", L.SD2_OPENCLIP_PREFIX, True)],
    "sdxl": [("l", L.SDXL_CLIP_L_PREFIX, False), ("g", L.SDXL_OPENCLIP_PREFIX, True)],
    "sdxl_refiner": [("g", L.REFINER_OPENCLIP_PREFIX, True)],
}


def detect_family(sd: Mapping) -> str:
    u = L.UNET_PREFIX
    for marker, name in _UNSUPPORTED_MARKERS:
        if any(marker in k for k in sd):
            raise ArchitectureError(f"detected {name}, which is not supported (supported: SD1.x, SD2.x, SDXL)")
    if u + "input_blocks.0.0.weight" not in sd:
        raise ArchitectureError(f"not an SD1/SD2/SDXL checkpoint: it looks like {describe_unknown(sd)}")
    if any(k.startswith(("edm_mean", "edm_std", "edm_vpred")) for k in sd):
        raise ArchitectureError("detected an EDM-parameterised SDXL (Playground v2.5 style), which is not supported")
    if u + "label_emb.0.0.weight" in sd:
        if any(k.startswith(L.REFINER_OPENCLIP_PREFIX) for k in sd):
            return "sdxl_refiner"
        if any(k.startswith("conditioner.embedders.1.") for k in sd):
            return "sdxl"
        if any(k.startswith("cond_stage_model.") for k in sd):
            raise ArchitectureError(
                "detected a class-conditioned SD2 UNet (unCLIP or upscaler), which is not supported")
        adm = sd[u + "label_emb.0.0.weight"].shape[1]
        return "sdxl_refiner" if adm - 5 * SDXL_TIME_EMBED_DIM == 1280 else "sdxl"
    proj_in = next((sd[k] for k in sd if k.startswith(u) and k.endswith(".proj_in.weight")), None)
    if proj_in is None:
        raise ArchitectureError("detected a UNet without cross-attention, which is not an SD1/SD2/SDXL model")
    return "sd1" if proj_in.ndim == 4 else "sd2"


def guess_prediction(sd: Mapping, family: str) -> str:
    if family in ("sdxl", "sdxl_refiner"):
        return "v" if "v_pred" in sd else "eps"
    if family == "sd2":
        # ComfyUI reads output_blocks.11 (the last block of the real 4-level UNet); taking the last
        # output block that has a transformer is the same key there and also works for tiny models.
        pattern = re.escape(L.UNET_PREFIX) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$"
        blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})
        if blocks:
            bias = sd[f"{L.UNET_PREFIX}output_blocks.{blocks[-1]}.1.transformer_blocks.0.norm1.bias"].float()
            return "v" if bias.std(unbiased=False).item() > 0.09 else "eps"
    return "eps"


def _shape(sd, key):
    try:
        return tuple(sd[key].shape)
    except KeyError:
        raise ArchitectureError(f"missing tensor {key!r}") from None


def infer_unet_config(sd: Mapping, family: str, prefix: str = L.UNET_PREFIX) -> dict:
    """UNet2DConditionModel kwargs from the LDM UNet's shapes."""
    blocks: dict[str, set[str]] = defaultdict(set)  # "input_blocks.4" -> {"0", "1"}
    depth: dict[str, set[int]] = defaultdict(set)  # "input_blocks.4" -> transformer block indices
    for key in sd:
        if m := re.match(re.escape(prefix) + r"((?:input|output)_blocks\.\d+|middle_block)\.(\d+)\.(.*)", key):
            blocks[m.group(1)].add(m.group(2))
            if t := re.match(r"transformer_blocks\.(\d+)\.", m.group(3)):
                depth[f"{m.group(1)}.{m.group(2)}"].add(int(t.group(1)))
    model_channels, in_channels = _shape(sd, prefix + "input_blocks.0.0.weight")[:2]
    channels, depths, resnets = [], [], []
    level_channels, level_depth, level_resnets = None, 0, 0
    i = 1
    while f"input_blocks.{i}" in blocks:
        if prefix + f"input_blocks.{i}.0.op.weight" in sd:  # a downsampler closes the level
            channels.append(level_channels); depths.append(level_depth); resnets.append(level_resnets)
            level_channels, level_depth, level_resnets = None, 0, 0
        else:
            level_channels = _shape(sd, prefix + f"input_blocks.{i}.0.out_layers.3.weight")[0]
            level_depth = len(depth.get(f"input_blocks.{i}.1", ()))
            level_resnets += 1
        i += 1
    channels.append(level_channels); depths.append(level_depth); resnets.append(level_resnets)
    if None in channels or len(set(resnets)) != 1:
        raise ArchitectureError(f"unexpected UNet layout (resnets per level {resnets})")
    mid_depth = len(depth.get("middle_block.1", ()))
    attn_key = next((k for k in sd if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in sd if k.startswith(prefix) and k.endswith(".proj_in.weight")), None)
    if attn_key is None or proj_in is None:
        raise ArchitectureError("the UNet has no cross-attention layers")
    linear = sd[proj_in].ndim == 2
    if linear:
        bad = [c for c, d in zip(channels, depths) if d and c % 64]
        if bad:
            raise ArchitectureError(f"cannot infer attention heads: channels {bad} are not multiples of 64 "
                                    f"(store them in the {METADATA_KEY!r} metadata)")
        heads = [max(1, c // 64) for c in channels]
    else:
        heads = 8
    # diffusers reads the mid block's depth from the last entry; levels without attention ignore theirs.
    layers = [d or 1 for d in depths]
    if depths[-1] == 0:
        layers[-1] = mid_depth or 1
    elif mid_depth and mid_depth != depths[-1]:
        raise ArchitectureError(f"mid-block depth {mid_depth} differs from the last level's {depths[-1]}")
    config = {
        "sample_size": {"sd1": 64, "sd2": 96, "sdxl": 128, "sdxl_refiner": 128}[family],
        "in_channels": in_channels,
        "out_channels": _shape(sd, prefix + "out.2.weight")[0],
        "down_block_types": tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        "up_block_types": tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)),
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else None,
        "block_out_channels": tuple(channels),
        "layers_per_block": resnets[0],
        "cross_attention_dim": _shape(sd, attn_key)[1],
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": layers if len(set(layers)) > 1 else layers[0],
    }
    time_dim = _shape(sd, prefix + "time_embed.0.weight")[0]
    if time_dim != 4 * model_channels:
        config["time_embedding_dim"] = time_dim
    if prefix + "label_emb.0.0.weight" in sd:
        config.update(addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
                      projection_class_embeddings_input_dim=_shape(sd, prefix + "label_emb.0.0.weight")[1])
    return config


def infer_vae_config(sd: Mapping, prefix: str, family: str) -> dict:
    """AutoencoderKL kwargs from the LDM VAE's shapes; the scaling factor is chosen by family."""
    levels = len({m.group(1) for k in sd if (m := re.match(re.escape(prefix) + r"encoder\.down\.(\d+)\.", k))})
    per_level = len({m.group(1) for k in sd
                     if (m := re.match(re.escape(prefix) + r"encoder\.down\.0\.block\.(\d+)\.", k))})
    if not levels or not per_level:
        raise ArchitectureError("the VAE has no encoder blocks")
    return {
        "in_channels": _shape(sd, prefix + "encoder.conv_in.weight")[1],
        "out_channels": _shape(sd, prefix + "decoder.conv_out.weight")[0],
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": tuple(_shape(sd, prefix + f"encoder.down.{i}.block.0.conv2.weight")[0]
                                    for i in range(levels)),
        "layers_per_block": per_level,
        "latent_channels": _shape(sd, prefix + "encoder.conv_out.weight")[0] // 2,
        "sample_size": 1024 if family.startswith("sdxl") else 512,
        "scaling_factor": VAE_SCALE[family],
        "use_quant_conv": prefix + "quant_conv.weight" in sd,
        "use_post_quant_conv": prefix + "post_quant_conv.weight" in sd,
        "mid_block_add_attention": prefix + "encoder.mid.attn_1.q.weight" in sd,
    }


def infer_text_encoder(sd: Mapping, prefix: str, open_clip: bool) -> TextEncoderSpec | None:
    """The text encoder stored under `prefix`, or None when the file has none there."""
    if open_clip:
        if prefix + "token_embedding.weight" not in sd:
            return None
        layer = prefix + "transformer.resblocks.{}."
        fc1 = "mlp.c_fc.weight"
        vocab, hidden = _shape(sd, prefix + "token_embedding.weight")
        positions = _shape(sd, prefix + "positional_embedding")[0]
        projection = sd.get(prefix + "text_projection")
    else:
        inner = prefix + "text_model." if prefix + "text_model.embeddings.token_embedding.weight" in sd else prefix
        if inner + "embeddings.token_embedding.weight" not in sd:
            return None
        layer = inner + "encoder.layers.{}."
        fc1 = "mlp.fc1.weight"
        vocab, hidden = _shape(sd, inner + "embeddings.token_embedding.weight")
        positions = _shape(sd, inner + "embeddings.position_embedding.weight")[0]
        projection = None
    count = 0
    while layer.format(count) + fc1 in sd:
        count += 1
    if count == 0:
        raise ArchitectureError(f"text encoder under {prefix!r} has no layers")
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _shape(sd, layer.format(0) + fc1)[0],
        "num_hidden_layers": count,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": positions,
        "hidden_act": "gelu" if open_clip else "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    if projection is not None:
        config["projection_dim"] = projection.shape[1]
    return TextEncoderSpec(prefix, open_clip, projection is not None, config)
