"""LATENT and CONDITIONING operations behind the latent and conditioning nodes, as ComfyUI does them.

A LATENT is a dict {"samples": [B,C,H,W], optional "noise_mask", optional "batch_index"}; every
function returns a new dict (a shallow copy of its input plus the changed entries) and never
changes its input in place, because the executor caches node outputs and shares them between
consumers. CONDITIONING is a list of [cond, extras] pairs (see farm.engine.types); operations copy
the extras dict of each pair for the same reason.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

LATENT_CHANNELS = 4
# LatentUpscale never goes below 64 pixels on a side, whatever the requested size.
MIN_UPSCALE_PIXELS = 64


# --- LATENT -----------------------------------------------------------------------------------

def empty(width: int, height: int, batch_size: int = 1) -> dict:
    """EmptyLatentImage: zeros [B, 4, height//8, width//8], float32 on the CPU."""
    return {"samples": torch.zeros([batch_size, LATENT_CHANNELS, height // 8, width // 8])}


def upscale(samples: dict, method: str, width: int, height: int, crop: str) -> dict:
    """LatentUpscale: width/height in pixels; a 0 follows the other side's aspect ratio, both 0
    leave the latent as it is."""
    if width == 0 and height == 0:
        return dict(samples)
    latent = samples["samples"]
    if width == 0:
        height = max(MIN_UPSCALE_PIXELS, height)
        width = max(MIN_UPSCALE_PIXELS, round(latent.shape[-1] * height / latent.shape[-2]))
    elif height == 0:
        width = max(MIN_UPSCALE_PIXELS, width)
        height = max(MIN_UPSCALE_PIXELS, round(latent.shape[-2] * width / latent.shape[-1]))
    else:
        width, height = max(MIN_UPSCALE_PIXELS, width), max(MIN_UPSCALE_PIXELS, height)
    return {**samples, "samples": resize(latent, width // 8, height // 8, method, crop)}


def upscale_by(samples: dict, method: str, scale_by: float) -> dict:
    """LatentUpscaleBy: both sides times scale_by, rounded, in latent pixels."""
    latent = samples["samples"]
    width, height = round(latent.shape[-1] * scale_by), round(latent.shape[-2] * scale_by)
    return {**samples, "samples": resize(latent, width, height, method, "disabled")}


def resize(latent: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """[B,C,H,W] to [B,C,height,width]; crop "center" first trims the source to the target aspect."""
    from farm.engine.images import _crop_to_aspect

    if crop == "center":
        latent = _crop_to_aspect(latent, width, height)
    elif crop != "disabled":
        raise ValueError(f"unknown crop {crop!r}")
    if method == "bislerp":
        return bislerp(latent, width, height)
    if method not in ("nearest-exact", "bilinear", "area", "bicubic"):
        raise ValueError(f"unknown upscale method {method!r}")
    return F.interpolate(latent, size=(height, width), mode=method)


def bislerp(latent: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resampling where each 1-D blend is a slerp of the channel vectors (their directions
    are slerped, their lengths interpolated linearly); first along the width, then the height."""
    x = latent.float().movedim(1, -1)  # [B, H, W, C]: one channel vector per position
    x = _slerp_axis(x, width, axis=2)
    x = _slerp_axis(x, height, axis=1)
    return x.movedim(-1, 1).to(latent.dtype)


def _slerp_axis(x: torch.Tensor, new_length: int, axis: int) -> torch.Tensor:
    old_length = x.shape[axis]
    # The source position of every output sample, exactly as bilinear interpolation places it
    # (half-pixel centres, clamped at the edges): interpolate the coordinates themselves.
    coords = torch.arange(old_length, dtype=torch.float32, device=x.device).reshape(1, 1, 1, -1)
    position = F.interpolate(coords, size=(1, new_length), mode="bilinear").reshape(-1)
    lower = position.floor()
    ratio = position - lower
    lower = lower.long()
    upper = (lower + 1).clamp(max=old_length - 1)
    shape = [1] * x.dim()
    shape[axis] = new_length
    return _slerp(x.index_select(axis, lower), x.index_select(axis, upper), ratio.reshape(shape))


def _slerp(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Slerp of channel vectors a -> b ([..., C]) by r, which broadcasts against [..., 1]."""
    a_norm = a.norm(dim=-1, keepdim=True)
    b_norm = b.norm(dim=-1, keepdim=True)
    a_dir = torch.where(a_norm == 0, torch.zeros_like(a), a / a_norm)
    b_dir = torch.where(b_norm == 0, torch.zeros_like(b), b / b_norm)
    dot = (a_dir * b_dir).sum(-1, keepdim=True)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    out = (torch.sin((1 - r) * omega) / sin_omega) * a_dir + (torch.sin(r * omega) / sin_omega) * b_dir
    out = out * (a_norm * (1 - r) + b_norm * r)
    # Nearly parallel vectors keep the first one (as ComfyUI does); nearly opposite ones, where the
    # slerp is undefined, fall back to a linear blend.
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where(dot < 1e-5 - 1, a * (1 - r) + b * r, out)


def composite(samples_to: dict, samples_from: dict, x: int, y: int, feather: int = 0) -> dict:
    """LatentComposite: paste samples_from at (x, y) pixels (//8), clipped to the destination. With
    feather, the pasted edges that lie inside the destination ramp in over feather//8 latents."""
    x, y, feather = x // 8, y // 8, feather // 8
    target = samples_to["samples"].clone()
    height, width = target.shape[-2], target.shape[-1]
    source = samples_from["samples"][..., :max(0, height - y), :max(0, width - x)]
    h, w = source.shape[-2], source.shape[-1]
    region = target[..., y:y + h, x:x + w]
    if feather == 0:
        region[...] = source
    else:
        ramp_y = _edge_ramp(h, feather, y != 0, y + h < height)
        ramp_x = _edge_ramp(w, feather, x != 0, x + w < width)
        mask = (ramp_y[:, None] * ramp_x[None, :]).to(source)
        region[...] = source * mask + region * (1 - mask)
    return {**samples_to, "samples": target}


def _edge_ramp(length: int, feather: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1 inside, (t+1)/feather at distance t from a feathered edge; the two ends multiply."""
    ramp = torch.ones(length)
    for t in range(min(feather, length)):
        value = (t + 1) / feather
        if at_start:
            ramp[t] *= value
        if at_end:
            ramp[length - 1 - t] *= value
    return ramp


def blend(samples1: dict, samples2: dict, blend_factor: float) -> dict:
    """LatentBlend (mode "normal"): samples1 * factor + samples2 * (1 - factor); samples2 is fitted
    to samples1's size first (bicubic, center crop)."""
    a, b = samples1["samples"], samples2["samples"]
    if a.shape[-2:] != b.shape[-2:]:
        b = resize(b, a.shape[-1], a.shape[-2], "bicubic", "center")
    return {**samples1, "samples": a * blend_factor + b * (1 - blend_factor)}


def repeat_batch(samples: dict, amount: int) -> dict:
    """RepeatLatentBatch: the batch `amount` times; per-image masks and batch indices follow."""
    latent = samples["samples"]
    out = {**samples, "samples": latent.repeat(amount, 1, 1, 1)}
    mask = samples.get("noise_mask")
    if mask is not None and mask.shape[0] > 1:
        out["noise_mask"] = _masks_for_batch(mask, latent.shape[0]).repeat(amount, 1, 1, 1)
    if "batch_index" in samples:
        # Repeats get indices past the originals so their noise differs (the sampler draws by index).
        indices = list(samples["batch_index"])
        offset = max(indices) - min(indices) + 1
        out["batch_index"] = indices + [i + n * offset for n in range(1, amount) for i in indices]
    return out


def from_batch(samples: dict, batch_index: int, length: int) -> dict:
    """LatentFromBatch: `length` images from `batch_index` (both clamped to the batch); the result
    remembers its original indices so the sampler draws the same noise as for the whole batch."""
    latent = samples["samples"]
    batch_index = min(latent.shape[0] - 1, batch_index)
    length = min(latent.shape[0] - batch_index, length)
    out = {**samples, "samples": latent[batch_index:batch_index + length].clone()}
    mask = samples.get("noise_mask")
    if mask is not None:
        if mask.shape[0] == 1:
            out["noise_mask"] = mask.clone()
        else:
            out["noise_mask"] = _masks_for_batch(mask, latent.shape[0])[batch_index:batch_index + length].clone()
    if "batch_index" in samples:
        out["batch_index"] = list(samples["batch_index"])[batch_index:batch_index + length]
    else:
        out["batch_index"] = list(range(batch_index, batch_index + length))
    return out


def _masks_for_batch(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """A mask batch cycled (repeated, then cut) to `batch` entries, as the sampler would use it."""
    if mask.shape[0] >= batch:
        return mask
    return mask.repeat(math.ceil(batch / mask.shape[0]), 1, 1, 1)[:batch]


def set_noise_mask(samples: dict, mask: torch.Tensor) -> dict:
    """SetLatentNoiseMask: the MASK as [B, 1, H, W] (any resolution; the sampler resizes it)."""
    return {**samples, "noise_mask": mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])}


# --- CONDITIONING -----------------------------------------------------------------------------

def combine(conditioning_1: list, conditioning_2: list) -> list:
    """ConditioningCombine: both lists; the sampler evaluates each entry and averages them."""
    return [*conditioning_1, *conditioning_2]


def concat(conditioning_to: list, conditioning_from: list) -> list:
    """ConditioningConcat: the first from-cond appended on the token axis of every to-cond."""
    if len(conditioning_from) > 1:
        log.warning("ConditioningConcat: conditioning_from holds %d conds; only the first is used",
                    len(conditioning_from))
    cond_from = conditioning_from[0][0]
    return [[torch.cat((cond, cond_from), dim=1), dict(extras)] for cond, extras in conditioning_to]


def average(conditioning_to: list, conditioning_from: list, to_strength: float) -> list:
    """ConditioningAverage: to * w + from * (1 - w). The from-cond is cut or zero-padded to each
    to-cond's token length; pooled vectors are averaged too (a missing one is taken from the other)."""
    if len(conditioning_from) > 1:
        log.warning("ConditioningAverage: conditioning_from holds %d conds; only the first is used",
                    len(conditioning_from))
    cond_from = conditioning_from[0][0]
    pooled_from = conditioning_from[0][1].get("pooled_output")
    out = []
    for cond_to, extras in conditioning_to:
        source = cond_from[:, :cond_to.shape[1]]
        if source.shape[1] < cond_to.shape[1]:
            padding = torch.zeros((1, cond_to.shape[1] - source.shape[1], cond_to.shape[2]), dtype=source.dtype)
            source = torch.cat([source, padding.to(source.device)], dim=1)
        extras = dict(extras)
        pooled_to = extras.get("pooled_output", pooled_from)
        if pooled_from is not None and pooled_to is not None:
            extras["pooled_output"] = pooled_to * to_strength + pooled_from * (1.0 - to_strength)
        elif pooled_from is not None:
            extras["pooled_output"] = pooled_from
        out.append([cond_to * to_strength + source * (1.0 - to_strength), extras])
    return out


def zero_out(conditioning: list) -> list:
    """ConditioningZeroOut: zero conds and pooled vectors (an 'empty' prompt for some models)."""
    out = []
    for cond, extras in conditioning:
        extras = dict(extras)
        if "pooled_output" in extras:
            extras["pooled_output"] = torch.zeros_like(extras["pooled_output"])
        out.append([torch.zeros_like(cond), extras])
    return out


def set_area(conditioning: list, width: int, height: int, x: int, y: int, strength: float) -> list:
    """ConditioningSetArea: the area as (h, w, y, x) in latent pixels (//8) plus its strength."""
    area = (height // 8, width // 8, y // 8, x // 8)
    return [[cond, {**extras, "area": area, "strength": strength, "set_area_to_bounds": False}]
            for cond, extras in conditioning]
