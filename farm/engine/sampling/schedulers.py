"""Sigma schedules by ComfyUI scheduler name, and the KSampler rules that turn steps into sigmas.

Invariants (spec 2.4):
- Every schedule is a new float32 CPU tensor, decreasing, ending in 0 (normal and ddim_uniform end
  on the table's first entry instead when that entry is ~0, which never happens for the SD table).
- Some schedules do not have steps + 1 entries: ddim_uniform can give more steps (n=30 -> 31),
  beta fewer (consecutive duplicate timesteps are dropped).
- KSampler rules, applied in this order: discard-penultimate samplers compute steps + 1 and drop
  the second-to-last sigma; denoise < 1 computes int(steps / denoise) steps and keeps the last
  steps + 1 sigmas (denoise <= 0: no sigmas, > 0.9999 counts as 1); then last_step and start_step
  slice the list, and force_full_denoise sets the last sigma to 0 when last_step cut it.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import torch

from farm.engine.sampling.model_sampling import DiscreteSchedule, discrete_schedule

# ComfyUI's order; the first entry is the fallback for an unknown name and the UI default.
SCHEDULER_NAMES = (
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
)

DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def simple(ms: DiscreteSchedule, n: int) -> torch.Tensor:
    """Every (1000/n)-th table entry from the top, by floored float stride."""
    stride = len(ms.sigmas) / n
    sigs = [float(ms.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor(sigs + [0.0], dtype=torch.float32)


def normal(ms: DiscreteSchedule, n: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from t(sigma_max) to t(sigma_min), sigma by log interpolation.

    `normal` includes both ends; `sgm_uniform` spaces n + 1 points and drops the last one.
    """
    start = ms.timestep(ms.sigma_max)
    end = ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(float(start), float(end), n + 1)[:-1]
    else:
        # A table whose first sigma is ~0 (zero-terminal-SNR) already ends at 0.
        if math.isclose(float(ms.sigma(end)), 0.0, abs_tol=1e-5):
            n += 1
            append_zero = False
        timesteps = torch.linspace(float(start), float(end), n)
    sigs = [float(ms.sigma(t)) for t in timesteps]
    if append_zero:
        sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def sgm_uniform(ms: DiscreteSchedule, n: int) -> torch.Tensor:
    return normal(ms, n, sgm=True)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: equal steps in sigma^(1/rho), float32 like the reference."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _with_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Equal steps in log sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def ddim_uniform(ms: DiscreteSchedule, n: int) -> torch.Tensor:
    """Table indices 1, 1 + s, 1 + 2s, ... (s = 1000 // n), highest first, then 0."""
    index = 1
    if math.isclose(float(ms.sigmas[index]), 0.0, abs_tol=1e-5):
        n += 1
        sigs = []
    else:
        sigs = [0.0]
    stride = max(len(ms.sigmas) // n, 1)
    while index < len(ms.sigmas):
        sigs.append(float(ms.sigmas[index]))
        index += stride
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def beta(ms: DiscreteSchedule, n: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Timesteps at the Beta(alpha, beta) quantiles of 1 - i/n (Lee et al. 2024), rounded half-even.

    Rounding can make neighbouring timesteps equal; repeats are dropped, so fewer steps may result.
    """
    total = len(ms.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, n, endpoint=False)
    timesteps = np.rint(scipy.stats.beta.ppf(quantiles, alpha, beta_) * total)
    sigs = []
    last = -1
    for t in timesteps:
        if t != last:
            sigs.append(float(ms.sigmas[int(t)]))
        last = t
    return torch.tensor(sigs + [0.0], dtype=torch.float32)


def linear_quadratic(ms: DiscreteSchedule, n: int, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule: in "1 - sigma" units, linear up to threshold_noise over the first half,
    then a quadratic that meets it with matching slope and reaches 1; scaled by sigma_max."""
    if n == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = n // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * n
        quadratic_steps = n - linear_steps
        quad_coef = step_diff / (linear_steps * quadratic_steps**2)
        lin_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quad_coef * (linear_steps**2)
        quadratic = [quad_coef * (i**2) + lin_coef * i + const for i in range(linear_steps, n)]
        schedule = [1.0 - v for v in linear + quadratic + [1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * ms.sigma_max.cpu()


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (the "KL-optimal" schedule of Align Your Steps' appendix).

    n = 1 divides 0 by 0 in the reference (a NaN sigma); a single step starts at sigma_max here.
    """
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float32)
    frac = torch.arange(n, dtype=torch.float32) / (n - 1)
    sigmas = (frac * math.atan(sigma_min) + (1 - frac) * math.atan(sigma_max)).tan()
    return _with_zero(sigmas)


_USES_TABLE = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
}
_USES_RANGE = {"karras": karras, "exponential": exponential, "kl_optimal": kl_optimal}


def calculate_sigmas(scheduler: str, steps: int, ms: DiscreteSchedule | None = None) -> torch.Tensor:
    """The schedule `scheduler` for `steps` steps (float32, CPU)."""
    ms = ms or discrete_schedule("cpu")
    if scheduler in _USES_TABLE:
        return _USES_TABLE[scheduler](ms, steps)
    if scheduler in _USES_RANGE:
        return _USES_RANGE[scheduler](steps, float(ms.sigma_min), float(ms.sigma_max))
    raise ValueError(f"unknown scheduler {scheduler!r}")


def _sampler_sigmas(sampler: str, scheduler: str, steps: int, ms) -> torch.Tensor:
    if sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        # These second-order samplers take a large last step; computing one extra step and
        # dropping the penultimate sigma keeps the number of UNet calls the user asked for.
        sigmas = calculate_sigmas(scheduler, steps + 1, ms)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return calculate_sigmas(scheduler, steps, ms)


def ksampler_sigmas(sampler: str, scheduler: str, steps: int, denoise: float | None = 1.0, ms=None) -> torch.Tensor:
    """The sigmas KSampler computes for a sampler, scheduler, step count and denoise."""
    if scheduler not in SCHEDULER_NAMES:  # validation refuses these; never run another schedule instead
        raise ValueError(f"unknown scheduler {scheduler!r}; available: {', '.join(SCHEDULER_NAMES)}")
    if denoise is None or denoise > 0.9999:
        return _sampler_sigmas(sampler, scheduler, steps, ms)
    if denoise <= 0.0:
        return torch.zeros([0], dtype=torch.float32)
    # A partial denoise runs the tail of a longer schedule, so steps keep their usual spacing.
    new_steps = int(steps / denoise)
    return _sampler_sigmas(sampler, scheduler, new_steps, ms)[-(steps + 1):].clone()


def slice_sigmas(sigmas: torch.Tensor, start_step: int | None = None, last_step: int | None = None,
                 force_full_denoise: bool = False) -> torch.Tensor | None:
    """KSamplerAdvanced's step window; None means "nothing to run, return the latent unchanged"."""
    sigmas = sigmas.clone()
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas
