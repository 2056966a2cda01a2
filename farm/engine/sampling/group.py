"""Several prompts' KSampler calls sampled as one batch (prompt coalescing), each member exactly as alone.

Invariants:
- The members share the model, steps, cfg, sampler, scheduler and denoise (the coalescing key says
  so); each brings its own LATENT, seed and conditioning. Latents with a noise mask (inpainting)
  are not coalesced: `sample_group` refuses them with ValueError and the caller runs them alone.
- Each member's initial noise is `prepare_noise(its latent, its seed)`, its latent is scaled (or
  not, when all zero) on its own, and its step noise comes from its own seed: device generators
  (ancestral samplers) and Brownian trees (SDE samplers) per member, shaped like its rows. The
  sampler's arithmetic is per element, so a member's rows follow exactly its lone trajectory as
  long as the denoiser gives them exactly the lone prediction.
- The denoiser: "exact" evaluates each member's own CFG denoiser on its rows, the same UNet calls
  as a lone run (bit-identical results on any device); "batched" merges the members' conditioning
  into one CFG denoiser, so all members share each UNet call (the throughput on a GPU, within the
  tolerance that batch size itself causes in the kernels). Batched needs plain conditioning (one
  entry per side, no areas, masks or timestep ranges, one context length); otherwise exact is used.
- `callback(step, total)` runs once per step for the whole group.
"""

from __future__ import annotations

import dataclasses

import torch

from farm.engine.sampling.cfg import CFGDenoiser, CondEntry, prepare_conds
from farm.engine.sampling.ksampler import fix_empty_latent_channels
from farm.engine.sampling.model_sampling import discrete_schedule, noise_scaling
from farm.engine.sampling.noise import prepare_noise
from farm.engine.sampling.samplers import SAMPLER_NAMES, SAMPLERS, SamplerContext
from farm.engine.sampling.schedulers import ksampler_sigmas

EXACT, BATCHED = "exact", "batched"


@dataclasses.dataclass
class GroupMember:
    """One prompt's KSampler inputs that may differ within a group."""

    latent: dict
    seed: int
    positive: list
    negative: list


def default_mode(device) -> str:
    """Exact on the CPU (its kernels change results with the batch size, and it gains little from
    batching); batched on accelerators, where one batch is what makes the throughput."""
    return EXACT if str(device) == "cpu" else BATCHED


def sample_group(model, members: list[GroupMember], steps: int, cfg: float, sampler_name: str, scheduler: str,
                 denoise: float = 1.0, mode: str | None = None, callback=None) -> list[dict]:
    """Sample every member's latent; return one new LATENT dict per member, as `sample` would alone."""
    if sampler_name not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler_name!r}; available: {', '.join(SAMPLER_NAMES)}")
    if any(member.latent.get("noise_mask") is not None for member in members):
        raise ValueError("latents with a noise mask are sampled alone, not in a group")
    images = [fix_empty_latent_channels(member.latent["samples"]) for member in members]
    noises = [prepare_noise(image, member.seed, member.latent.get("batch_index"))
              for image, member in zip(images, members)]
    sigmas = ksampler_sigmas(sampler_name, scheduler, steps, denoise)
    if sigmas is None or len(sigmas) == 0:
        return [{**member.latent, "samples": image.float().cpu().clone()} for member, image in zip(members, images)]
    device = model.device
    schedule = discrete_schedule(device)
    sizes = tuple(int(image.shape[0]) for image in images)
    with torch.inference_mode():
        sigmas = sigmas.to(device)
        starts, denoisers = [], []
        for member, image, noise in zip(members, images, noises):
            latent = image.to(device=device, dtype=torch.float32)
            if torch.count_nonzero(latent) > 0:
                latent = latent * model.latent_scale
            noise = noise.to(device=device, dtype=torch.float32)
            starts.append(noise_scaling(sigmas[0], noise, latent, schedule.is_max_denoise(sigmas[0])))
            denoisers.append(CFGDenoiser(model, prepare_conds(member.positive, model, "positive", latent.shape, schedule),
                                         prepare_conds(member.negative, model, "negative", latent.shape, schedule),
                                         cfg, schedule))
        mode = mode or default_mode(device)
        model_fn = _batched(model, denoisers, sizes, cfg, schedule) if mode == BATCHED else None
        if model_fn is None:
            model_fn = _exact(denoisers, sizes)
        total = len(sigmas) - 1
        step = (lambda i: callback(i, total)) if callback is not None else (lambda i: None)
        context = SamplerContext(seed=members[0].seed, step=step, seeds=tuple(m.seed for m in members), sizes=sizes)
        samples = SAMPLERS[sampler_name](model_fn, torch.cat(starts), sigmas, context)
        samples = (samples / model.latent_scale).float().cpu()
    # Inference tensors cannot be modified in place outside inference mode: hand back normal ones.
    return [{**member.latent, "samples": part.clone()} for member, part in zip(members, samples.split(sizes))]


def _exact(denoisers: list, sizes: tuple[int, ...]):
    def denoise(x, sigma):
        return torch.cat([own(part, sigma) for own, part in zip(denoisers, x.split(sizes))])
    return denoise


def _batched(model, denoisers: list, sizes: tuple[int, ...], cfg: float, schedule):
    """One CFG denoiser over every member's rows, or None when their conditioning cannot merge."""
    sides = []
    for side in ("positive", "negative"):
        entries = [getattr(own, side) for own in denoisers]
        if any(len(found) != 1 for found in entries):
            return None
        merged = _merge([found[0] for found in entries], sizes)
        if merged is None:
            return None
        sides.append([merged])
    return CFGDenoiser(model, sides[0], sides[1], cfg, schedule)


def _merge(entries: list[CondEntry], sizes: tuple[int, ...]) -> CondEntry | None:
    """The members' plain entries as one whose context has a row per latent row."""
    first = entries[0]
    plain = all(entry.area is None and entry.mask is None and entry.sigma_start is None and entry.sigma_end is None
                and entry.strength == first.strength and entry.context.shape[1:] == first.context.shape[1:]
                and entry.context.shape[0] == 1 for entry in entries)
    if not plain:
        return None

    def rows(values):
        return torch.cat([value.repeat([size] + [1] * (value.ndim - 1)) for value, size in zip(values, sizes)])

    merged = CondEntry(context=rows([entry.context for entry in entries]), strength=first.strength)
    if first.text_embeds is not None:
        merged.text_embeds = rows([entry.text_embeds for entry in entries])
        merged.time_ids = rows([entry.time_ids for entry in entries])
    return merged
