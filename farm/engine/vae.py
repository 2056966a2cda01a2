"""VAE decoding and encoding of ComfyUI LATENT and IMAGE values with a diffusers AutoencoderKL.

Conventions (spec execution.md §2.8): LATENT samples are raw VAE units (never multiplied by the
scale factor); IMAGE is float32 [B, H, W, 3] in 0..1 on the CPU. Decoding runs in the VAE's dtype,
then clamp((x + 1) / 2, 0, 1); encoding feeds 2x - 1 and returns the mean of the latent
distribution (ComfyUI's SD VAEs use the mode, not a sample). Images are cropped, centred, to
multiples of the VAE's downscale factor (8) before encoding.

Batches are split by ComfyUI's memory estimate; when the device still runs out of memory the
decode (or encode) falls back to tiled processing. Tiled processing is ComfyUI's: tiles overlap,
each tile's output is weighted by a ramp over the overlap, and the whole pass runs with three tile
shapes (square, wide, tall) whose results are averaged so that seams fall in different places.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# ComfyUI's activation estimates for these VAEs, in bytes per unit of dtype size: decode per latent
# pixel, encode per image pixel. They decide how many images go through at once.
DECODE_BYTES_PER_LATENT_PIXEL = 2178 * 64
ENCODE_BYTES_PER_PIXEL = 1767
# The tiles of the out-of-memory fallback: 64 latent pixels with an overlap of 16 to decode,
# 512 pixels with an overlap of 64 to encode.
FALLBACK_DECODE_TILE, FALLBACK_DECODE_OVERLAP = 64, 16
FALLBACK_ENCODE_TILE, FALLBACK_ENCODE_OVERLAP = 512, 64


# --- decode -----------------------------------------------------------------------------------

def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """VAEDecode: LATENT samples [B, 4, h, w] to IMAGE [B, 8h, 8w, 3]."""
    model, device, dtype = _placement(vae)
    per_image = DECODE_BYTES_PER_LATENT_PIXEL * latent.shape[-2] * latent.shape[-1] * _dtype_size(dtype)
    batch = max(1, int(_free_memory(device) // per_image))
    try:
        images = [_to_image(_decode_fn(model, device, dtype)(latent[start:start + batch]))
                  for start in range(0, latent.shape[0], batch)]
        return torch.cat(images)
    except torch.OutOfMemoryError:
        log.warning("VAE decode ran out of memory; decoding in tiles instead")
    # Outside the except block, so the failed attempt's tensors are already freed.
    _empty_cache(device)
    return _decode_tiles(vae, latent, FALLBACK_DECODE_TILE, FALLBACK_DECODE_TILE, FALLBACK_DECODE_OVERLAP)


def decode_tiled(vae, latent: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
    """VAEDecodeTiled: tile_size and overlap in pixels (the overlap is kept below a quarter tile)."""
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    scale = downscale(vae)
    return _decode_tiles(vae, latent, tile_size // scale, tile_size // scale, overlap // scale)


def _decode_tiles(vae, latent: torch.Tensor, tile_x: int, tile_y: int, overlap: int) -> torch.Tensor:
    model, device, dtype = _placement(vae)
    fn = _decode_fn(model, device, dtype)
    shapes = ((tile_x // 2, tile_y * 2), (tile_x * 2, tile_y // 2), (tile_x, tile_y))
    total = sum(tiled_scale(latent, fn, tx, ty, overlap, downscale(vae), 3) for tx, ty in shapes)
    return _to_image(total / 3.0)


def _decode_fn(model, device, dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(latent: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.decode(latent.to(device=device, dtype=dtype)).sample.float().cpu()
    return run


def _to_image(decoded: torch.Tensor) -> torch.Tensor:
    return ((decoded + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)


# --- encode -----------------------------------------------------------------------------------

def encode(vae, image: torch.Tensor) -> torch.Tensor:
    """VAEEncode: IMAGE [B, H, W, C] to LATENT samples [B, 4, H//8, W//8] (raw units)."""
    pixels = crop_to_multiple(image, downscale(vae))[..., :3]
    model, device, dtype = _placement(vae)
    per_image = ENCODE_BYTES_PER_PIXEL * pixels.shape[1] * pixels.shape[2] * _dtype_size(dtype)
    batch = max(1, int(_free_memory(device) // per_image))
    try:
        fn = _encode_fn(model, device, dtype)
        return torch.cat([fn(pixels[start:start + batch].movedim(-1, 1))
                          for start in range(0, pixels.shape[0], batch)])
    except torch.OutOfMemoryError:
        log.warning("VAE encode ran out of memory; encoding in tiles instead")
    _empty_cache(device)
    return _encode_tiles(vae, pixels, FALLBACK_ENCODE_TILE, FALLBACK_ENCODE_TILE, FALLBACK_ENCODE_OVERLAP)


def encode_tiled(vae, image: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
    """VAEEncodeTiled: tile_size and overlap in pixels."""
    # A tile must advance: an overlap of a quarter tile or more is cut, as the decode does.
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    return _encode_tiles(vae, crop_to_multiple(image, downscale(vae))[..., :3], tile_size, tile_size, overlap)


def _encode_tiles(vae, pixels: torch.Tensor, tile_x: int, tile_y: int, overlap: int) -> torch.Tensor:
    model, device, dtype = _placement(vae)
    fn = _encode_fn(model, device, dtype)
    channels = model.config.latent_channels
    samples = pixels.movedim(-1, 1)
    shapes = ((tile_x, tile_y), (tile_x * 2, tile_y // 2), (tile_x // 2, tile_y * 2))
    total = sum(tiled_scale(samples, fn, tx, ty, overlap, 1 / downscale(vae), channels) for tx, ty in shapes)
    return total / 3.0


def _encode_fn(model, device, dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(pixels: torch.Tensor) -> torch.Tensor:
        # 2x - 1 in float32 before the cast, so a bf16 VAE sees the same rounding as ComfyUI's.
        x = (pixels.float() * 2.0 - 1.0).to(device=device, dtype=dtype)
        with torch.no_grad():
            return model.encode(x).latent_dist.mean.float().cpu()
    return run


def crop_to_multiple(image: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """The centred part of IMAGE [B, H, W, C] whose sides are multiples of `multiple`."""
    height, width = image.shape[1] // multiple * multiple, image.shape[2] // multiple * multiple
    if (height, width) == tuple(image.shape[1:3]):
        return image
    top, left = (image.shape[1] % multiple) // 2, (image.shape[2] % multiple) // 2
    return image[:, top:top + height, left:left + width, :]


def encode_for_inpaint(vae, image: torch.Tensor, mask: torch.Tensor, grow_mask_by: int = 6) -> dict:
    """VAEEncodeForInpaint: masked pixels are set to grey (0.5) before encoding, and the mask, grown
    by grow_mask_by pixels and rounded, becomes the latent's noise_mask (at pixel resolution)."""
    height, width = image.shape[1], image.shape[2]
    mask = F.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(),
                         size=(height, width), mode="bilinear")
    multiple = downscale(vae)
    pixels = crop_to_multiple(image, multiple)[..., :3]
    crop_h, crop_w = pixels.shape[1], pixels.shape[2]
    top, left = (height % multiple) // 2, (width % multiple) // 2
    mask = mask[:, :, top:top + crop_h, left:left + crop_w]
    if grow_mask_by == 0:
        grown = mask
    else:
        # A max over a grow x grow window of the binary mask dilates it; the window is placed as
        # ComfyUI's convolution places it (padding ceil((g-1)/2), so one row/column too many
        # comes out and is cut below).
        grown = F.max_pool2d(mask.round(), kernel_size=grow_mask_by, stride=1,
                             padding=math.ceil((grow_mask_by - 1) / 2))
    keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)
    pixels = (pixels - 0.5) * keep + 0.5
    return {"samples": encode(vae, pixels), "noise_mask": grown[:, :, :crop_h, :crop_w].round()}


# --- tiles ------------------------------------------------------------------------------------

def tiled_scale(samples: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile_x: int, tile_y: int,
                overlap: int, scale: float, out_channels: int) -> torch.Tensor:
    """Apply `fn` (which scales H and W by `scale`) tile by tile to [B, C, H, W] and blend the tiles.

    Tiles start every (tile - overlap) along each axis and the last one is moved back to end at
    the border; each tile's output is weighted by a ramp (t+1)/feather over `overlap` on every edge
    and the weighted sum is divided by the summed weights. A sample no bigger than one tile is
    passed to `fn` whole. The result is float32 on the CPU.
    """
    height, width = samples.shape[-2], samples.shape[-1]
    output = torch.empty((samples.shape[0], out_channels, round(height * scale), round(width * scale)))
    for b in range(samples.shape[0]):
        sample = samples[b:b + 1]
        if height <= tile_y and width <= tile_x:
            output[b:b + 1] = fn(sample)
            continue
        total = torch.zeros((1, *output.shape[1:]))
        weight = torch.zeros_like(total)
        for y, x in itertools.product(_tile_starts(height, tile_y, overlap), _tile_starts(width, tile_x, overlap)):
            y = max(0, min(height - overlap, y))
            x = max(0, min(width - overlap, x))
            piece = fn(sample[..., y:y + tile_y, x:x + tile_x])
            feather = round(overlap * scale)
            ramp = (_ramp(piece.shape[-2], feather)[:, None] * _ramp(piece.shape[-1], feather)[None, :])
            top, left = round(y * scale), round(x * scale)
            region = (..., slice(top, top + piece.shape[-2]), slice(left, left + piece.shape[-1]))
            total[region] += piece * ramp
            weight[region] += ramp
        output[b:b + 1] = total / weight
    return output


def _tile_starts(length: int, tile: int, overlap: int) -> range | list[int]:
    if length <= tile:
        return [0]
    return range(0, length - overlap, tile - overlap)


def _ramp(length: int, feather: int) -> torch.Tensor:
    ramp = torch.ones(length)
    for t in range(min(feather, length)):
        value = (t + 1) / feather
        ramp[t] *= value
        ramp[length - 1 - t] *= value
    return ramp


# --- placement and memory ---------------------------------------------------------------------

def downscale(vae) -> int:
    """Pixels per latent pixel: 8 for the SD1/SD2/SDXL VAEs (one halving per block after the first)."""
    return 2 ** (len(vae.vae.config.block_out_channels) - 1)


def _placement(vae):
    model = vae.vae
    parameter = next(model.parameters())
    return model, parameter.device, parameter.dtype


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _free_memory(device: torch.device) -> int:
    """Bytes the next computation may use: free device memory plus what torch holds but does not use."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    from farm.hostinfo import host_memory

    return host_memory()[1]


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
