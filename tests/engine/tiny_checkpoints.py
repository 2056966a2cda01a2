"""Tiny random checkpoints in the real single-file layouts, generated at test time (nothing downloaded).

Each `make_*` builds small diffusers/transformers modules from a seed, writes them with
farm.engine.ldm_layout exactly as SD1 / SD2 / SDXL `.safetensors` files are laid out, and returns
the source modules so tests can compare the loader's output with them bit for bit. Every parameter
is perturbed away from its constructor init, so swapped norms or biases (ones and zeros at init)
cannot go unnoticed. The text encoders keep the real vocabulary (49408) and 77 positions.
"""

from __future__ import annotations

import dataclasses
import json

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from farm.engine import ldm_layout as L

VOCAB, POSITIONS = 49408, 77


# The real SD1.5 / SD2.1 / SDXL-base UNet configs, for shape-only checks on the meta device.
FULL_SIZE_UNETS = {
    "sd1": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8),
    "sd2": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                use_linear_projection=True),
    "sdxl": dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
                 use_linear_projection=True, transformer_layers_per_block=[1, 2, 10],
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}


@dataclasses.dataclass
class Tiny:
    path: str
    family: str
    prediction: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: dict  # "l" / "h" / "g" -> source module


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval().requires_grad_(False)


def tiny_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4,
                        norm_num_groups=32, sample_size=32)
    return _perturb(vae, seed + 1)


def tiny_clip(seed: int, hidden: int, heads: int, *, open_clip: bool, projection: int | None = None):
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=heads, max_position_embeddings=POSITIONS,
                            hidden_act="gelu" if open_clip else "quick_gelu",
                            projection_dim=projection or hidden)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return _perturb(model, seed + 1)


def _save(path, sd: dict, metadata: dict | None = None) -> str:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in (metadata or {}).items()})
    return str(path)


def make_sd1(path, seed: int = 0) -> Tiny:
    """SD1 layout: conv proj_in (8 heads), CLIP-L hidden 32 with 4 heads declared in metadata."""
    torch.manual_seed(seed)
    unet = _perturb(UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")), seed + 1)
    vae = tiny_vae(seed + 2)
    clip = tiny_clip(seed + 4, 32, 4, open_clip=False)
    sd = L.unet_to_ldm(unet.state_dict()) | L.vae_to_ldm(vae.state_dict()) | L.clip_l_to_ldm(clip.state_dict())
    sd["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)  # extras real files carry; ignored
    _save(path, sd, {"farm.arch": {"clip_l": {"num_attention_heads": 4}}})
    return Tiny(str(path), "sd1", "eps", unet, vae, {"l": clip})


def make_sd2(path, seed: int = 0, prediction: str = "v") -> Tiny:
    """SD2 layout: linear proj_in with 64-dim heads, OpenCLIP ViT-H-style encoder with projection.

    The prediction type is carried the way ComfyUI guesses it: by the spread of the last output
    block's first norm1.bias (std 0.2 for v, 0.02 for eps)."""
    torch.manual_seed(seed)
    unet = _perturb(UNet2DConditionModel(
        sample_size=8, block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=64,
        attention_head_dim=(1, 2), use_linear_projection=True, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")), seed + 1)
    if prediction == "v":
        bias = unet.up_blocks[-1].attentions[-1].transformer_blocks[0].norm1.bias
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)) * 0.2)
    vae = tiny_vae(seed + 2)
    clip = tiny_clip(seed + 4, 64, 1, open_clip=True, projection=64)
    sd = L.unet_to_ldm(unet.state_dict()) | L.vae_to_ldm(vae.state_dict()) | L.open_clip_to_ldm(clip.state_dict())
    _save(path, sd)
    return Tiny(str(path), "sd2", prediction, unet, vae, {"h": clip})


def make_sdxl(path, seed: int = 0, v_pred: bool = False) -> Tiny:
    """SDXL base layout: ADM `label_emb` (pooled 64 + 6 x 256), CLIP-L + OpenCLIP bigG-style encoders."""
    torch.manual_seed(seed)
    unet = _perturb(UNet2DConditionModel(
        sample_size=8, block_out_channels=(64, 128), layers_per_block=2, cross_attention_dim=128,
        attention_head_dim=(1, 2), use_linear_projection=True, norm_num_groups=32,
        transformer_layers_per_block=(1, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=64 + 6 * 256), seed + 1)
    vae = tiny_vae(seed + 2)
    clip_l = tiny_clip(seed + 4, 64, 1, open_clip=False)
    clip_g = tiny_clip(seed + 6, 64, 1, open_clip=True, projection=64)
    sd = (L.unet_to_ldm(unet.state_dict()) | L.vae_to_ldm(vae.state_dict())
          | L.clip_l_to_ldm(clip_l.state_dict(), prefix=L.SDXL_CLIP_L_PREFIX)
          | L.open_clip_to_ldm(clip_g.state_dict(), prefix=L.SDXL_OPENCLIP_PREFIX))
    if v_pred:
        sd["v_pred"] = torch.tensor([])
    _save(path, sd)
    return Tiny(str(path), "sdxl", "v" if v_pred else "eps", unet, vae, {"l": clip_l, "g": clip_g})


def make_sdxl_refiner(path, seed: int = 0) -> Tiny:
    """SDXL refiner layout: ADM of pooled 64 + 5 x 256, one OpenCLIP bigG-style encoder at embedders.0."""
    torch.manual_seed(seed)
    unet = _perturb(UNet2DConditionModel(
        sample_size=8, block_out_channels=(64, 128), layers_per_block=2, cross_attention_dim=64,
        attention_head_dim=(1, 2), use_linear_projection=True, norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=64 + 5 * 256), seed + 1)
    vae = tiny_vae(seed + 2)
    clip_g = tiny_clip(seed + 6, 64, 1, open_clip=True, projection=64)
    sd = (L.unet_to_ldm(unet.state_dict()) | L.vae_to_ldm(vae.state_dict())
          | L.open_clip_to_ldm(clip_g.state_dict(), prefix=L.REFINER_OPENCLIP_PREFIX))
    _save(path, sd)
    return Tiny(str(path), "sdxl_refiner", "eps", unet, vae, {"g": clip_g})


def make_vae_file(path, seed: int = 0, layout: str = "ldm") -> AutoencoderKL:
    """A standalone VAE: layout "ldm" (bare LDM names), "ldm_prefixed" (first_stage_model.) or "diffusers"."""
    vae = tiny_vae(seed)
    sd = vae.state_dict() if layout == "diffusers" else L.vae_to_ldm(
        vae.state_dict(), prefix=L.VAE_PREFIX if layout == "ldm_prefixed" else "")
    _save(path, sd)
    return vae


def make_sd1_lora(path, tiny: Tiny, seed: int = 0, rank: int = 4, alpha: float = 2.0) -> dict:
    """A kohya-layout LoRA for `make_sd1`'s models, mixing the namings real files use:
    diffusers UNet names, LDM UNet names, a 3x3 conv (LoCon), PEFT lora_A/lora_B and text encoder keys.
    Returns {diffusers param name or "l:"+CLIP param name: (up, down, alpha)} for exact checks."""
    gen = torch.Generator().manual_seed(seed)
    unet, clip = tiny.unet, tiny.text_encoders["l"]
    targets = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        # LDM naming, as SDXL trainers write it: output_blocks.5.1 is up_blocks.1.attentions.2
        "lora_unet_output_blocks_5_1_transformer_blocks_0_attn2_to_k":
            "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in": "down_blocks.0.attentions.0.proj_in.weight",
        "lora_unet_down_blocks_1_resnets_0_conv1": "down_blocks.1.resnets.0.conv1.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "l:encoder.layers.0.self_attn.q_proj.weight",
        "lora_te_text_model_encoder_layers_1_mlp_fc1": "l:encoder.layers.1.mlp.fc1.weight",
    }
    sd, expected = {}, {}
    for name, param in targets.items():
        weight = (clip.get_parameter(param[2:]) if param.startswith("l:") else unet.get_parameter(param))
        out, inp = weight.shape[:2]
        kernel = tuple(weight.shape[2:])
        down = torch.randn((rank, inp, *kernel), generator=gen) * 0.1
        up = torch.randn((out, rank, *((1, 1) if kernel else ())), generator=gen) * 0.1
        sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"] = up, down
        sd[f"{name}.alpha"] = torch.tensor(alpha)
        expected[param] = (up, down, alpha)
    # diffusers/PEFT naming, no alpha (scale 1)
    param = "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight"
    out, inp = unet.get_parameter(param).shape
    a, b = torch.randn((rank, inp), generator=gen) * 0.1, torch.randn((out, rank), generator=gen) * 0.1
    sd[f"unet.{param[:-len('.weight')]}.lora_A.weight"], sd[f"unet.{param[:-len('.weight')]}.lora_B.weight"] = a, b
    expected[param] = (b, a, float(rank))
    _save(path, sd, {"ss_network_dim": str(rank)})
    return expected
