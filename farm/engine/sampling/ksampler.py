"""The KSampler entry point: one LATENT in, one sampled LATENT out, as ComfyUI's common_ksampler.

Invariants (spec 2.1-2.5):
- LATENT samples are raw VAE units on the CPU; they are multiplied by the model's latent scale on
  the way in (an all-zero latent is left alone) and divided on the way out. The result is a new
  dict with the other keys (batch_index, noise_mask) kept and float32 CPU samples.
- Nothing to run (denoise <= 0, or start_step at or past the end) returns the latent unchanged.
- The sampler state is float32 on the model's device; the first state is
  noise * sigma_0 + latent (noise * sqrt(1 + sigma_0^2) + latent when sigma_0 is the maximum).
- With a noise_mask, every model evaluation first resets the unmasked region to the original
  latent noised to the current sigma, and its x0 prediction there to the original latent
  (KSamplerX0Inpaint). ddim re-noises with fresh CPU noise seeded seed + 1.
- `callback(step_index, total_steps)` runs after every step; whatever it raises (Interrupted)
  propagates and stops sampling. A callback that takes an `x0` keyword also gets the latest
  denoised prediction (model latent units, on the model's device), for previews.
- The returned tensors are ordinary tensors (made outside inference mode), safe to edit in place.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from farm.engine.sampling.cfg import CFGDenoiser, prepare_conds
from farm.engine.sampling.model_sampling import discrete_schedule, noise_scaling
from farm.engine.sampling.noise import cpu_generator, prepare_noise
from farm.engine.sampling.samplers import RANDOM_INPAINT_SAMPLERS, SAMPLER_NAMES, SAMPLERS, SamplerContext
from farm.engine.sampling.schedulers import ksampler_sigmas, slice_sigmas

# SD1, SD2 and SDXL latents all have 4 channels (an inpainting UNet's extra inputs are not latent).
LATENT_CHANNELS = 4


def fix_empty_latent_channels(latent: torch.Tensor, channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """Widen an all-zero latent (e.g. EmptyLatentImage for another family) to `channels`."""
    if latent.shape[1] != channels and torch.count_nonzero(latent) == 0:
        return latent.new_zeros([latent.shape[0], channels, *latent.shape[2:]])
    return latent


def prepare_mask(noise_mask: torch.Tensor, shape, device) -> torch.Tensor:
    """A noise mask resized (bilinear) to the latent and repeated over channels and batch."""
    mask = torch.as_tensor(noise_mask).float()
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    mask = F.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = mask.repeat(1, shape[1], 1, 1)
    if mask.shape[0] < shape[0]:
        mask = mask.repeat(-(-shape[0] // mask.shape[0]), 1, 1, 1)
    return mask[: shape[0]].to(device)


class InpaintDenoiser:
    """Keeps the unmasked region (mask 0) on the original latent's noising path."""

    def __init__(self, inner, mask: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor):
        self.inner = inner
        self.mask = mask
        self.latent = latent
        self.noise = noise

    def __call__(self, x, sigma):
        keep = 1.0 - self.mask
        x = x * self.mask + noise_scaling(sigma, self.noise, self.latent) * keep
        out = self.inner(x, sigma)
        return out * self.mask + self.latent * keep


def run_sampler(model, noise: torch.Tensor, latent_image: torch.Tensor, sigmas: torch.Tensor, sampler_name: str,
                cfg: float, positive: list, negative: list, seed: int, noise_mask=None, callback=None) -> torch.Tensor:
    """Sample on the model's device; raw-unit latent in and out (the result is float32 CPU)."""
    device = model.device
    schedule = discrete_schedule(device)
    with torch.inference_mode():
        latent = latent_image.to(device=device, dtype=torch.float32)
        if torch.count_nonzero(latent) > 0:
            latent = latent * model.latent_scale
        noise = noise.to(device=device, dtype=torch.float32)
        sigmas = sigmas.to(device)
        shape = latent.shape
        denoiser = CFGDenoiser(
            model,
            prepare_conds(positive, model, "positive", shape, schedule),
            prepare_conds(negative, model, "negative", shape, schedule),
            cfg,
            schedule,
        )
        model_fn = denoiser
        if noise_mask is not None:
            inpaint_noise = noise
            if sampler_name in RANDOM_INPAINT_SAMPLERS:
                inpaint_noise = torch.randn(shape, generator=cpu_generator(seed + 1), device="cpu").to(device)
            model_fn = InpaintDenoiser(denoiser, prepare_mask(noise_mask, shape, device), latent, inpaint_noise)
        x = noise_scaling(sigmas[0], noise, latent, schedule.is_max_denoise(sigmas[0]))
        total = len(sigmas) - 1
        wants_x0 = _takes_x0(callback)
        denoised = [None]
        if wants_x0:
            model_fn = _recording(model_fn, denoised)

        def step(i: int) -> None:
            if callback is None:
                return
            if wants_x0:
                callback(i, total, x0=denoised[0])
            else:
                callback(i, total)

        samples = SAMPLERS[sampler_name](model_fn, x, sigmas, SamplerContext(seed=seed, step=step))
        samples = (samples / model.latent_scale).float().cpu()
    # Inference tensors cannot be modified in place outside inference mode; hand back a normal one.
    return samples.clone()


def _takes_x0(callback) -> bool:
    if callback is None:
        return False
    try:
        parameters = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "x0" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _recording(model_fn, slot: list):
    """`model_fn` that also keeps its latest denoised prediction in slot[0]."""
    def record(x, sigma):
        slot[0] = model_fn(x, sigma)
        return slot[0]
    return record


def sample(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
           positive: list, negative: list, latent: dict, denoise: float = 1.0, disable_noise: bool = False,
           start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
           callback=None) -> dict:
    """KSampler / KSamplerAdvanced: denoise `latent` and return a new LATENT dict."""
    latent_image = fix_empty_latent_channels(latent["samples"])
    if sampler_name not in SAMPLERS:  # validation refuses these; never run another algorithm instead
        raise ValueError(f"unknown sampler {sampler_name!r}; available: {', '.join(SAMPLER_NAMES)}")
    if disable_noise:
        noise = torch.zeros(latent_image.shape, dtype=torch.float32)
    else:
        noise = prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = ksampler_sigmas(sampler_name, scheduler, steps, denoise)
    sigmas = slice_sigmas(sigmas, start_step, last_step, force_full_denoise)
    out = dict(latent)
    if sigmas is None or len(sigmas) == 0:
        out["samples"] = latent_image.float().cpu().clone()
        return out
    out["samples"] = run_sampler(model, noise, latent_image, sigmas, sampler_name, cfg, positive, negative,
                                 seed, latent.get("noise_mask"), callback)
    return out
