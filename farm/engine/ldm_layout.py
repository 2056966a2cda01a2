"""Write diffusers/transformers state dicts in the single-file (LDM / ComfyUI) checkpoint layouts.

This is the inverse of diffusers' `single_file_utils.convert_*` functions, which the loader uses to
read. It exists so that tests can build tiny random models with the diffusers and transformers
constructors and save them exactly as real `.safetensors` checkpoints are laid out (spec §1.1),
and so that tools can export models in a layout ComfyUI reads.

Invariants:
- Every function is a pure renaming (plus the documented reshapes: VAE attention `[C,C]` becomes a
  1x1 conv `[C,C,1,1]`; OpenCLIP q/k/v are concatenated into `in_proj_*`; the OpenCLIP
  `text_projection` is stored as `P` with `x @ P`, the transpose of the HF Linear weight).
- No key is dropped silently: an unexpected key raises KeyError, so a new diffusers module shows up
  as a failing test instead of a checkpoint that loads with random weights.
- Tensors are not copied unless a reshape or concatenation requires it.
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
# Older diffusers VAEs name the attention projections query/key/value/proj_attn.
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
             "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def _split(key: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight')."""
    module, _, param = key.rpartition(".")
    return module, param


def _resnet(rest: str, table: dict[str, str]) -> str:
    module, param = _split(rest)
    if module not in table:
        raise KeyError(f"unexpected resnet parameter {rest!r}")
    return f"{table[module]}.{param}"


def unet_to_ldm(state_dict: dict, prefix: str = UNET_PREFIX) -> dict:
    """A diffusers `UNet2DConditionModel` state dict in LDM `openaimodel` names, with `prefix`."""
    per_level = 1 + max(int(m.group(1)) for k in state_dict
                        if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k)))
    up_has_attn = {int(m.group(1)) for k in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for key, value in state_dict.items():
        module, param = _split(key)
        if module in _UNET_TOP:
            new = f"{_UNET_TOP[module]}.{param}"
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i, j = int(m.group(1)), int(m.group(2))
            new = f"input_blocks.{(per_level + 1) * i + j + 1}.0.{_resnet(m.group(3), _UNET_RESNET)}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            i, j = int(m.group(1)), int(m.group(2))
            new = f"input_blocks.{(per_level + 1) * i + j + 1}.1.{m.group(3)}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{(per_level + 1) * (int(m.group(1)) + 1)}.0.op.{m.group(2)}"
        elif m := re.match(r"mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"middle_block.{2 * int(m.group(1))}.{_resnet(m.group(2), _UNET_RESNET)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m.group(1)}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i, j = int(m.group(1)), int(m.group(2))
            new = f"output_blocks.{(per_level + 1) * i + j}.0.{_resnet(m.group(3), _UNET_RESNET)}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            i, j = int(m.group(1)), int(m.group(2))
            new = f"output_blocks.{(per_level + 1) * i + j}.1.{m.group(3)}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            i = int(m.group(1))
            # The upsampler follows the attention in the same LDM block when the level has one.
            slot = 2 if i in up_has_attn else 1
            new = f"output_blocks.{(per_level + 1) * i + per_level}.{slot}.conv.{m.group(2)}"
        else:
            raise KeyError(f"unexpected UNet key {key!r}")
        out[prefix + new] = value
    return out


def vae_to_ldm(state_dict: dict, prefix: str = VAE_PREFIX) -> dict:
    """A diffusers `AutoencoderKL` state dict in LDM names: decoder levels reversed, 1x1-conv attention."""
    levels = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    out = {}
    for key, value in state_dict.items():
        if m := re.match(r"(encoder|decoder)\.(conv_in|conv_out)\.(.+)", key):
            new = key
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            new = f"{m.group(1)}.norm_out.{m.group(2)}"
        elif re.match(r"(post_)?quant_conv\.", key):
            new = key
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m.group(1)}.block.{m.group(2)}.{_resnet(m.group(3), _VAE_RESNET)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}.{_resnet(m.group(3), _VAE_RESNET)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_resnet(m.group(3), _VAE_RESNET)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            module, param = _split(m.group(2))
            if module not in _VAE_ATTN:
                raise KeyError(f"unexpected VAE attention key {key!r}")
            new = f"{m.group(1)}.mid.attn_1.{_VAE_ATTN[module]}.{param}"
            if param == "weight" and module != "group_norm" and value.ndim == 2:
                value = value[:, :, None, None]
        else:
            raise KeyError(f"unexpected VAE key {key!r}")
        out[prefix + new] = value
    return out


def clip_l_to_ldm(state_dict: dict, prefix: str = SD1_CLIP_PREFIX, position_ids: bool = True) -> dict:
    """An HF `CLIPTextModel` state dict (flat or `text_model.`-prefixed) as `{prefix}text_model.*`.

    Real SD1/SDXL files carry `embeddings.position_ids`; writing it keeps fixtures honest about the
    loader having to drop it.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("text_model.")
        if key.startswith("text_projection"):
            raise KeyError("CLIP-L in SD1/SDXL checkpoints has no text_projection")
        out[f"{prefix}text_model.{key}"] = value
    if position_ids:
        n = out[f"{prefix}text_model.embeddings.position_embedding.weight"].shape[0]
        out[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return out


_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_to_ldm(state_dict: dict, prefix: str = SD2_OPENCLIP_PREFIX) -> dict:
    """An HF `CLIPTextModel(WithProjection)` state dict in OpenCLIP names (SD2 ViT-H, SDXL bigG)."""
    out: dict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
            continue
        key = key.removeprefix("text_model.")
        if key in _OPENCLIP_TOP:
            out[prefix + _OPENCLIP_TOP[key]] = value
        elif key == "embeddings.position_ids":
            continue  # a buffer, not a weight; OpenCLIP files do not have it
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            if m.group(2) not in _OPENCLIP_LAYER:
                raise KeyError(f"unexpected CLIP key {key!r}")
            out[f"{prefix}transformer.resblocks.{m.group(1)}.{_OPENCLIP_LAYER[m.group(2)]}.{m.group(3)}"] = value
        else:
            raise KeyError(f"unexpected CLIP key {key!r}")
    for (layer, param), parts in qkv.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out
