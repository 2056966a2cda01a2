"""Classifier-free guidance over a diffusers UNet: conditioning entries, UNet batching, CFG.

Invariants (spec 2.7):
- CFG combines denoised (x0) predictions: uncond + (cond - uncond) * cfg. When cfg == 1.0
  (math.isclose) the negative side is not evaluated at all and counts as zero.
- Entries that can share a UNet call (same area size, same extras, cross-attention lengths whose
  LCM is at most 4x the shorter) run as one batch, negative entries first; contexts of different
  lengths are repeated to their LCM, which leaves attention unchanged. A batch is split in halves
  only when the device runs out of memory.
- Several entries on one side are averaged per pixel, weighted by strength, mask (times
  mask_strength) and, for area entries without a mask, an 8-pixel feathered edge.
- The UNet sees x / sqrt(sigma^2 + 1) in its own dtype and the nearest integer timestep; its
  output is cast to float32 and turned into x0 at the exact sigma.
- SDXL entries carry added_cond_kwargs: text_embeds (pooled) and time_ids [height, width, crop_h,
  crop_w, target_height, target_width] (the refiner: [..., aesthetic_score]) defaulting to the
  latent size * 8, crops 0, aesthetic score 6 (positive) / 2.5 (negative).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from farm.engine.compiled import run_unet
from farm.engine.sampling.model_sampling import DiscreteSchedule, calculate_denoised, calculate_input

SDXL_FAMILIES = ("sdxl", "sdxl_refiner")
FEATHER = 8
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclasses.dataclass
class CondEntry:
    """One conditioning pair, resolved against the latent it will guide."""

    context: torch.Tensor  # [1 or B, L, D] on the device, model dtype
    strength: float = 1.0
    area: tuple | None = None  # (h, w, y, x) in latent pixels
    mask: torch.Tensor | None = None  # [Bm, H, W] at latent size, float32 on the device
    mask_strength: float = 1.0
    sigma_start: float | None = None  # skipped while sigma > sigma_start
    sigma_end: float | None = None  # skipped while sigma < sigma_end
    text_embeds: torch.Tensor | None = None  # SDXL pooled output [1, P]
    time_ids: torch.Tensor | None = None  # SDXL [1, 6] / refiner [1, 5]


def _pooled_width(unet, family: str) -> int:
    config = getattr(unet, "config", None)
    n_ids = 5 if family == "sdxl_refiner" else 6
    try:
        return int(config.projection_class_embeddings_input_dim) - n_ids * int(config.addition_time_embed_dim)
    except (AttributeError, TypeError):
        return 1280


def _resolve_area(extras: dict, dims: tuple[int, int]) -> tuple | None:
    area = extras.get("area")
    if area is None:
        return None
    if area[0] == "percentage":
        # ConditioningSetAreaPercentage: fractions of the latent size.
        a = area[1:]
        size = tuple(max(1, round(a[d] * dims[d])) for d in range(2))
        offset = tuple(round(a[d + 2] * dims[d]) for d in range(2))
        return size + offset
    return tuple(int(v) for v in area)


def _resolve_mask(extras: dict, dims: tuple[int, int], device) -> tuple[torch.Tensor | None, tuple | None]:
    """The mask at latent size, and the area it implies when set_area_to_bounds is on."""
    mask = extras.get("mask")
    if mask is None:
        return None, None
    mask = torch.as_tensor(mask).float().to(device)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape[1:]) != dims:
        mask = F.interpolate(mask.unsqueeze(1), size=dims, mode="bilinear", align_corners=False).squeeze(1)
    area = None
    if extras.get("set_area_to_bounds", False):
        bounds = mask.abs().amax(dim=0)
        ys, xs = torch.nonzero(bounds, as_tuple=True)
        if len(ys) == 0:
            area = (8, 8, 0, 0)  # an all-zero mask contributes nothing; keep the work small
        else:
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
            area = (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)
    return mask, area


def _sdxl_extras(extras: dict, family: str, prompt_type: str, latent_shape, pooled_width: int):
    pooled = extras.get("pooled_output")
    if pooled is None:
        pooled = torch.zeros([1, pooled_width])
    height = extras.get("height", latent_shape[2] * 8)
    width = extras.get("width", latent_shape[3] * 8)
    crop_h = extras.get("crop_h", 0)
    crop_w = extras.get("crop_w", 0)
    if family == "sdxl_refiner":
        default_score = 2.5 if prompt_type == "negative" else 6.0
        ids = [height, width, crop_h, crop_w, extras.get("aesthetic_score", default_score)]
    else:
        ids = [height, width, crop_h, crop_w, extras.get("target_height", height), extras.get("target_width", width)]
    return torch.as_tensor(pooled).float().reshape(pooled.shape[0], -1), torch.tensor([ids], dtype=torch.float32)


def prepare_conds(conditioning: list, model, prompt_type: str, latent_shape,
                  schedule: DiscreteSchedule) -> list[CondEntry]:
    """Resolve CONDITIONING pairs into entries on the model's device."""
    device, dtype = model.device, model.dtype
    dims = (int(latent_shape[2]), int(latent_shape[3]))
    pooled_width = _pooled_width(model.unet, model.family) if model.family in SDXL_FAMILIES else 0
    entries = []
    for cond, extras in conditioning:
        extras = extras or {}
        mask, mask_area = _resolve_mask(extras, dims, device)
        entry = CondEntry(
            context=torch.as_tensor(cond).to(device=device, dtype=dtype),
            strength=float(extras.get("strength", 1.0)),
            area=mask_area or _resolve_area(extras, dims),
            mask=mask,
            mask_strength=float(extras.get("mask_strength", 1.0)),
        )
        if "start_percent" in extras:
            entry.sigma_start = schedule.percent_to_sigma(extras["start_percent"])
        if "end_percent" in extras:
            entry.sigma_end = schedule.percent_to_sigma(extras["end_percent"])
        if model.family in SDXL_FAMILIES:
            pooled, time_ids = _sdxl_extras(extras, model.family, prompt_type, latent_shape, pooled_width)
            entry.text_embeds = pooled.to(device=device, dtype=dtype)
            entry.time_ids = time_ids.to(device)
        entries.append(entry)
    return entries


def _repeat_to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.shape[0] > batch:
        return t[:batch]
    if t.shape[0] < batch:
        return t.repeat([math.ceil(batch / t.shape[0])] + [1] * (t.ndim - 1))[:batch]
    return t


@dataclasses.dataclass
class _Chunk:
    """One entry applied to (part of) x: its UNet input, weights and where the result goes."""

    side: int  # 0 = positive, 1 = negative
    entry: CondEntry
    x: torch.Tensor
    mult: torch.Tensor
    area: tuple | None


def _chunk(side: int, entry: CondEntry, x: torch.Tensor, sigma: float) -> _Chunk | None:
    if entry.sigma_start is not None and sigma > entry.sigma_start:
        return None
    if entry.sigma_end is not None and sigma < entry.sigma_end:
        return None
    area = None
    input_x = x
    if entry.area is not None:
        h, w, y, xo = entry.area
        h = min(x.shape[2] - y, h)
        w = min(x.shape[3] - xo, w)
        area = (h, w, y, xo)
        input_x = x[:, :, y:y + h, xo:xo + w]
    if entry.mask is not None:
        mask = entry.mask[: input_x.shape[0]]
        if area is not None:
            mask = mask[:, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
        mask = (mask * entry.mask_strength).unsqueeze(1)
        mult = mask.repeat(input_x.shape[0] // mask.shape[0], input_x.shape[1], 1, 1) * entry.strength
    else:
        mult = torch.ones_like(input_x) * entry.strength
        if area is not None:
            # Fade an area's inner edges in over 8 latent pixels so regions blend.
            ramp = [(t + 1) / FEATHER for t in range(FEATHER)]
            edges = ((area[0], area[2], x.shape[2]), (area[1], area[3], x.shape[3]))
            for dim, (size, offset, full) in enumerate(edges):
                for t, f in enumerate(ramp[: min(FEATHER, size)]):
                    if offset != 0:
                        mult.narrow(dim + 2, t, 1).mul_(f)
                    if size + offset < full:
                        mult.narrow(dim + 2, size - 1 - t, 1).mul_(f)
    return _Chunk(side, entry, input_x, mult, area)


def _can_batch(a: _Chunk, b: _Chunk) -> bool:
    if a.x.shape != b.x.shape:
        return False
    ca, cb = a.entry.context, b.entry.context
    if ca.shape[0] != cb.shape[0] or ca.shape[2] != cb.shape[2]:
        return False
    if ca.shape[1] != cb.shape[1]:
        lcm = math.lcm(ca.shape[1], cb.shape[1])
        if lcm // min(ca.shape[1], cb.shape[1]) > 4:
            return False
    for name in ("text_embeds", "time_ids"):
        ta, tb = getattr(a.entry, name), getattr(b.entry, name)
        if (ta is None) != (tb is None) or (ta is not None and ta.shape != tb.shape):
            return False
    return True


class CFGDenoiser:
    """x0 prediction with classifier-free guidance: `denoiser(x, sigma) -> denoised`."""

    def __init__(self, model, positive: list[CondEntry], negative: list[CondEntry], cfg: float,
                 schedule: DiscreteSchedule):
        self.model = model
        self.positive = positive
        self.negative = negative
        self.cfg = cfg
        self.schedule = schedule
        self.unet_calls: list[int] = []  # batch size of every UNet call, for diagnostics and tests

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        skip_uncond = math.isclose(self.cfg, 1.0)
        sides = [self.positive, None if skip_uncond else self.negative]
        cond_pred, uncond_pred = self.calc_cond_batch(sides, x, sigma)
        return uncond_pred + (cond_pred - uncond_pred) * self.cfg

    def calc_cond_batch(self, sides: list, x: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(())
        out = [torch.zeros_like(x) for _ in sides]
        # A tiny floor instead of 1: pixels no entry covers come out as 0, not NaN.
        counts = [torch.full_like(x, 1e-37) for _ in sides]
        to_run = []
        for side, entries in enumerate(sides):
            for entry in entries or ():
                chunk = _chunk(side, entry, x, float(sigma))
                if chunk is not None:
                    to_run.append(chunk)
        while to_run:
            first = to_run[0]
            picked = [i for i, c in enumerate(to_run) if _can_batch(c, first)]
            # Reversed, as ComfyUI batches: negative entries come first in the UNet batch.
            batch = [to_run[i] for i in reversed(picked)]
            taken = set(picked)
            to_run = [c for i, c in enumerate(to_run) if i not in taken]
            for chunk, pred in zip(batch, self._run(batch, sigma)):
                target, weight = out[chunk.side], counts[chunk.side]
                if chunk.area is not None:
                    h, w, y, xo = chunk.area
                    target = target[:, :, y:y + h, xo:xo + w]
                    weight = weight[:, :, y:y + h, xo:xo + w]
                target += pred * chunk.mult
                weight += chunk.mult
        return [o / c for o, c in zip(out, counts)]

    def _run(self, batch: list[_Chunk], sigma: torch.Tensor) -> list[torch.Tensor]:
        try:
            return self._unet(batch, sigma)
        except _OUT_OF_MEMORY:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            return self._run(batch[:half], sigma) + self._run(batch[half:], sigma)

    def _unet(self, batch: list[_Chunk], sigma: torch.Tensor) -> list[torch.Tensor]:
        model = self.model
        n = batch[0].x.shape[0]
        x_in = torch.cat([c.x for c in batch])
        length = 1
        for c in batch:
            length = math.lcm(length, c.entry.context.shape[1])
        contexts = []
        for c in batch:
            ctx = c.entry.context
            ctx = ctx.repeat(1, length // ctx.shape[1], 1)
            contexts.append(_repeat_to_batch(ctx, n))
        kwargs = {}
        if batch[0].entry.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.cat([_repeat_to_batch(c.entry.text_embeds, n) for c in batch]),
                "time_ids": torch.cat([_repeat_to_batch(c.entry.time_ids, n) for c in batch]),
            }
        t = self.schedule.timestep(sigma).float().expand(x_in.shape[0]).to(model.device)
        unet_input = calculate_input(sigma, x_in).to(model.device, model.dtype)
        self.unet_calls.append(x_in.shape[0])
        output = run_unet(model, unet_input, t, encoder_hidden_states=torch.cat(contexts), return_dict=False,
                          **kwargs)[0]
        denoised = calculate_denoised(model.prediction, sigma, output.float(), x_in)
        return list(denoised.chunk(len(batch)))
