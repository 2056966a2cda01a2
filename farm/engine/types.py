"""The values that travel along MODEL, CLIP, VAE, CONDITIONING and LATENT links on a worker.

ComfyUI's conventions, which every engine module follows:
- LATENT is a dict {"samples": float32 [B, C, H/8, W/8] in raw VAE units (NOT multiplied by the
  scale factor), optional "noise_mask": [B or 1, 1, H', W'], optional "batch_index": [int]}.
- CONDITIONING is a list of [cond, extras] pairs: cond is float32 [1, 77*k, dim] on the CPU and
  extras a dict: "pooled_output" ([1, 1280] for SDXL, [1, 768] for SD1 CLIP-L), and optionally
  "area" (h, w, y, x in latent pixels), "strength", "mask", "mask_strength", "set_area_to_bounds",
  and for SDXL "width", "height", "crop_w", "crop_h", "target_width", "target_height".
- IMAGE is float32 [B, H, W, 3] in 0..1 on the CPU; MASK is float32 [B, H, W].
"""

from __future__ import annotations

import dataclasses
from typing import Any

# ComfyUI's latent formats: SD1 and SD2 share one, SDXL has its own.
LATENT_SCALE = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}


@dataclasses.dataclass(frozen=True)
class LoraPatch:
    """One LoRA applied to a model or a text encoder: its file and strength."""

    path: str
    strength: float


@dataclasses.dataclass
class DiffusionModel:
    """MODEL: a diffusers UNet with what sampling needs to know about it."""

    unet: Any  # diffusers UNet2DConditionModel, on its compute device and dtype
    family: str  # "sd1" | "sd2" | "sdxl" | "sdxl_refiner"
    prediction: str  # "eps" | "v"
    key: tuple  # model-cache key of the base weights
    loras: tuple[LoraPatch, ...] = ()
    # The model cache's torch.compile hook (farm.engine.compiled.CompiledHandle) or None: the
    # sampler calls the UNet through farm.engine.compiled.run_unet, which uses it when present.
    compiled: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def latent_scale(self) -> float:
        return LATENT_SCALE[self.family]

    @property
    def device(self):
        return next(self.unet.parameters()).device

    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype


@dataclasses.dataclass
class TextEncoders:
    """CLIP: the text encoders of a checkpoint, its tokenizer and the clip-skip layer."""

    family: str  # "sd1" | "sd2" | "sdxl" | "sdxl_refiner"
    encoders: dict  # "l": CLIPTextModel (SD1, SDXL), "h": OpenCLIP ViT-H as CLIPTextModel(WithProjection) (SD2), "g": CLIPTextModelWithProjection (SDXL)
    tokenizer: Any  # transformers CLIPTokenizer (same BPE for every family)
    key: tuple
    layer: int | None = None  # CLIPSetLastLayer's stop_at_clip_layer (-1 = last); None = family default
    loras: tuple[LoraPatch, ...] = ()


@dataclasses.dataclass
class Autoencoder:
    """VAE: a diffusers AutoencoderKL and its latent scale."""

    vae: Any  # diffusers AutoencoderKL
    family: str
    key: tuple

    @property
    def latent_scale(self) -> float:
        return LATENT_SCALE[self.family]
