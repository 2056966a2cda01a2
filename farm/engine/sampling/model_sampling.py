"""The discrete SD1/SD2/SDXL noise schedule and the EPS / V parametrisations of the UNet.

Invariants (ComfyUI's ModelSamplingDiscrete, spec 2.3):
- betas are LDM's "linear" schedule, (linspace(sqrt(0.00085), sqrt(0.012), 1000))**2, computed in
  float64 with the cumulative product; the sigma table is stored as float32 (1000 entries) and its
  log is taken in float64 before being cast, so sigma_min = 0.029167 and sigma_max = 14.614641.
- sigma -> timestep is the *nearest integer index* in log sigma (ties go to the lower index), so the
  UNet only ever sees integer timesteps; timestep -> sigma interpolates log sigma linearly for
  fractional timesteps.
- Samplers work on float32 x in the VE parametrisation x = x0 + sigma * n; the UNet input is
  x / sqrt(sigma^2 + 1) and its output is turned into a denoised (x0) prediction here.
"""

from __future__ import annotations

import math

import torch

NUM_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012


class DiscreteSchedule:
    """The 1000-entry sigma table and the conversions between sigma, timestep and percent."""

    def __init__(self, device: torch.device | str = "cpu"):
        betas = torch.linspace(LINEAR_START**0.5, LINEAR_END**0.5, NUM_TIMESTEPS, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas64 = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = sigmas64.float().to(device)
        self.log_sigmas = sigmas64.log().float().to(device)

    def to(self, device) -> "DiscreteSchedule":
        moved = DiscreteSchedule.__new__(DiscreteSchedule)
        moved.sigmas = self.sigmas.to(device)
        moved.log_sigmas = self.log_sigmas.to(device)
        return moved

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest table index in log sigma, as an integer tensor shaped like sigma."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma.log().to(self.log_sigmas.device)
        dists = log_sigma.reshape(1, -1) - self.log_sigmas[:, None]
        # argmin returns the first minimum, i.e. the lower index on an exact tie.
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep) -> torch.Tensor:
        """Sigma at a (possibly fractional) timestep, interpolated in log sigma (float32)."""
        t = torch.as_tensor(timestep, device=self.log_sigmas.device).float().clamp(0, NUM_TIMESTEPS - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the schedule (0 = start, pure noise; 1 = end), for timestep ranges."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))

    def is_max_denoise(self, sigma_start) -> bool:
        """True when sampling starts at (or above) the schedule's largest sigma."""
        max_sigma = float(self.sigma_max)
        start = float(sigma_start)
        return math.isclose(max_sigma, start, rel_tol=1e-05) or start > max_sigma


def calculate_input(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The UNet input for a VE state x at sigma (sigma_data = 1)."""
    return x / (sigma**2 + 1.0) ** 0.5


def calculate_denoised(prediction: str, sigma: torch.Tensor, model_output: torch.Tensor,
                       x: torch.Tensor) -> torch.Tensor:
    """The x0 prediction from the UNet output; `sigma` must broadcast against x."""
    if prediction == "eps":
        return x - model_output * sigma
    if prediction == "v":
        return x / (sigma**2 + 1.0) - model_output * sigma / (sigma**2 + 1.0) ** 0.5
    raise ValueError(f"unknown prediction type {prediction!r}")


def noise_scaling(sigma, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False) -> torch.Tensor:
    """The starting state: noise at sigma on top of the (scaled) latent.

    Max-denoise starts from noise of variance 1 + sigma^2 so that a VP model sees unit variance
    input even when the latent is not empty.
    """
    sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
    if max_denoise:
        scaled = noise * torch.sqrt(1.0 + sigma**2.0)
    else:
        scaled = noise * sigma
    return scaled + latent


_SCHEDULES: dict[str, DiscreteSchedule] = {}


def discrete_schedule(device: torch.device | str = "cpu") -> DiscreteSchedule:
    """The (immutable) schedule on a device, built once per device."""
    key = str(torch.device(device))
    if key not in _SCHEDULES:
        _SCHEDULES[key] = DiscreteSchedule(device)
    return _SCHEDULES[key]
