"""Cheap sampling previews: the denoised latent projected linearly to RGB (no VAE), as a small JPEG.

The projection matrices are the widely published per-family least-squares fits from latent
channels to RGB (SD1/SD2 share one latent space, SDXL has its own); they expect the latent as the
sampler sees it, i.e. already multiplied by the family's latent scale.
"""

from __future__ import annotations

import io

import torch

# [latent channel][R, G, B] and the RGB offset, per latent space.
_SD1_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
PROJECTIONS = {
    "sd1": (_SD1_FACTORS, (0.0, 0.0, 0.0)),
    "sd2": (_SD1_FACTORS, (0.0, 0.0, 0.0)),
    "sdxl": (_SDXL_FACTORS, (0.1084, -0.0175, -0.0011)),
    "sdxl_refiner": (_SDXL_FACTORS, (0.1084, -0.0175, -0.0011)),
}
MAX_SIZE = 512
JPEG_QUALITY = 95


def latent_to_rgb(x0: torch.Tensor, family: str) -> torch.Tensor:
    """The first image of a [B, 4, h, w] latent as uint8 [h, w, 3] on the CPU."""
    factors, bias = PROJECTIONS.get(family, PROJECTIONS["sd1"])
    latent = x0[0].float()
    weights = torch.tensor(factors, dtype=latent.dtype, device=latent.device)
    offset = torch.tensor(bias, dtype=latent.dtype, device=latent.device)
    rgb = torch.einsum("chw,cr->hwr", latent[: weights.shape[0]], weights) + offset
    # The fits map to -1..1 like the VAE's output.
    return ((rgb + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def preview_jpeg(x0: torch.Tensor, family: str, max_size: int = MAX_SIZE) -> tuple[str, bytes]:
    """("image/jpeg", bytes) of the projected latent, fitted within `max_size` pixels."""
    from PIL import Image

    image = Image.fromarray(latent_to_rgb(x0, family).numpy())
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "image/jpeg", buffer.getvalue()
