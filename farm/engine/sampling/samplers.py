"""The sampling algorithms by ComfyUI sampler name, written from the k-diffusion / paper maths.

Every sampler is `fn(model, x, sigmas, ctx) -> x`:
- `model(x, sigma)` returns the denoised (x0) prediction for the VE state x at scalar sigma;
- `x` is float32 on the model's device, already noised to sigmas[0];
- `ctx.noise(x)` / `ctx.brownian(x, sigmas)` give the step noise, seeded with `ctx.seed` (spec 2.6),
  or, for a coalesced group, each member's rows from its own seed (exactly its noise alone);
  `ctx.step(i)` is called once after each of the len(sigmas) - 1 steps (dpm_fast calls it once
  per UNet evaluation, of which there are as many).
A step whose target sigma is 0 is a plain Euler / denoise step in every sampler, as in ComfyUI.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from scipy import integrate

from farm.engine.sampling.dpm_solver import sample_dpm_fast
from farm.engine.sampling.noise import BrownianTreeNoiseSampler, default_noise_sampler
from farm.engine.sampling.unipc import sample_uni_pc, sample_uni_pc_bh2


@dataclasses.dataclass
class SamplerContext:
    """What a sampler needs besides the model, the state and the sigmas."""

    seed: int | None = None
    step: Callable[[int], None] = lambda i: None
    # A coalesced group (farm.engine.sampling.group): x's rows are the members' latents, `sizes`
    # rows each, and each member's step noise comes from its own seed in `seeds`.
    seeds: tuple[int, ...] | None = None
    sizes: tuple[int, ...] | None = None

    def noise(self, x):
        """`noise(sigma, sigma_next)`: fresh unit noise shaped like x, from the device generator(s)."""
        if self.seeds is None:
            return default_noise_sampler(x, self.seed)
        return _stacked([default_noise_sampler(part, seed) for part, seed in zip(x.split(self.sizes), self.seeds)])

    def brownian(self, x, sigmas):
        """`noise(sigma, sigma_next)`: Brownian tree increments (the SDE samplers), per member in a group."""
        if self.seeds is None:
            return _brownian(x, sigmas, self.seed)
        return _stacked([_brownian(part, sigmas, seed) for part, seed in zip(x.split(self.sizes), self.seeds)])


def _stacked(samplers):
    return lambda sigma, sigma_next: torch.cat([sample(sigma, sigma_next) for sample in samplers])


def to_d(x, sigma, denoised):
    """dx/dsigma of the probability-flow ODE."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    """Split a step to sigma_to into a deterministic step to sigma_down and fresh noise sigma_up."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _brownian(x, sigmas, seed):
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)


def sample_euler(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        ctx.step(i)
    return x


def sample_euler_ancestral(model, x, sigmas, ctx):
    noise = ctx.noise(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
        ctx.step(i)
    return x


def sample_heun(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
        ctx.step(i)
    return x


def _dpm_2_step(model, x, sigma, sigma_to, d):
    """Midpoint in log sigma: evaluate the slope there, apply it over the whole step."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
    return x + d_2 * (sigma_to - sigma)


def sample_dpm_2(model, x, sigmas, ctx):
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], model(x, sigmas[i]))
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            x = _dpm_2_step(model, x, sigmas[i], sigmas[i + 1], d)
        ctx.step(i)
    return x


def sample_dpm_2_ancestral(model, x, sigmas, ctx):
    noise = ctx.noise(x)
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], model(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _dpm_2_step(model, x, sigmas[i], sigma_down, d)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
        ctx.step(i)
    return x


def lms_coefficient(order: int, t, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j}."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def basis(tau):
        value = 1.0
        for k in range(order):
            if k != j:
                value *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return value

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def sample_lms(model, x, sigmas, ctx, order: int = 4):
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ds.append(to_d(x, sigmas[i], denoised))
        ds = ds[-order:]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [lms_coefficient(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
        ctx.step(i)
    return x


def sample_dpmpp_2s_ancestral(model, x, sigmas, ctx):
    noise = ctx.noise(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            # DPM-Solver++(2S) in t = -log(sigma), midpoint r = 1/2.
            t, t_next = -sigmas[i].log(), -sigma_down.log()
            h = t_next - t
            sigma_s = (-(t + h / 2)).exp()
            x_2 = (sigma_s / sigmas[i]) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, sigma_s)
            x = (sigma_down / sigmas[i]) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
        ctx.step(i)
    return x


def sample_dpmpp_sde(model, x, sigmas, ctx, r: float = 0.5):
    if len(sigmas) <= 1:
        return x
    noise = ctx.brownian(x, sigmas)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        else:
            # Two ancestral DPM-Solver++ stages in lambda = -log(sigma): to lambda + r*h, then to
            # the end with a blend of both x0 predictions; each stage adds its own tree increment.
            lam, lam_next = -sigma.log(), -sigma_next.log()
            h = lam_next - lam
            sigma_s = (-(lam + r * h)).exp()
            sd, su = ancestral_step(sigma, sigma_s)
            x_2 = (sd / sigma) * x - (sd / sigma - 1) * denoised
            x_2 = x_2 + noise(sigma, sigma_s) * su
            denoised_2 = model(x_2, sigma_s)
            sd, su = ancestral_step(sigma, sigma_next)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (sd / sigma) * x - (sd / sigma - 1) * denoised_d
            x = x + noise(sigma, sigma_next) * su
        ctx.step(i)
    return x


def sample_dpmpp_2m(model, x, sigmas, ctx):
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            if old_denoised is not None:
                # Second order: extrapolate x0 linearly in t from the previous step's prediction.
                r = (t - (-sigmas[i - 1].log())) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            else:
                denoised_d = denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        ctx.step(i)
    return x


def sample_dpmpp_2m_sde(model, x, sigmas, ctx, eta: float = 1.0, solver_type: str = "midpoint"):
    if len(sigmas) <= 1:
        return x
    noise = ctx.brownian(x, sigmas)
    old_denoised = None
    h_last = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt()
            h_last = h
        old_denoised = denoised
        ctx.step(i)
    return x


def sample_dpmpp_3m_sde(model, x, sigmas, ctx, eta: float = 1.0):
    if len(sigmas) <= 1:
        return x
    noise = ctx.brownian(x, sigmas)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            # Up to third order from divided differences of the last three x0 predictions in t.
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        ctx.step(i)
    return x


def _ddpm_step(x, sigma, sigma_prev, eps, noise):
    """One DDPM posterior step (Ho et al. eq. 11 with the beta-tilde variance) in VP space."""
    alpha_cumprod = 1 / (sigma * sigma + 1)
    alpha_cumprod_prev = 1 / (sigma_prev * sigma_prev + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
    if sigma_prev > 0:
        mu = mu + ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise(sigma, sigma_prev)
    return mu


def sample_ddpm(model, x, sigmas, ctx):
    noise = ctx.noise(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        x = _ddpm_step(x / torch.sqrt(1.0 + sigma**2.0), sigma, sigma_next, (x - denoised) / sigma, noise)
        if sigma_next != 0:
            x = x * torch.sqrt(1.0 + sigma_next**2.0)
        ctx.step(i)
    return x


def sample_lcm(model, x, sigmas, ctx):
    noise = ctx.noise(x)
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
        ctx.step(i)
    return x


def _dpm_fast(model, x, sigmas, ctx):
    # ComfyUI runs DPM-Solver-fast between the last non-zero sigma and the first, with as many
    # UNet evaluations as steps; it never takes the final step to sigma 0.
    if len(sigmas) <= 1:
        return x
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    return sample_dpm_fast(model, x, sigma_min, sigmas[0], len(sigmas) - 1, ctx)


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": _dpm_fast,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    # ddim is Euler on the given sigmas; only its inpaint re-noising differs (see ksampler).
    "ddim": sample_euler,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}

# ComfyUI's order (its k-diffusion samplers, then ddim, uni_pc, uni_pc_bh2).
SAMPLER_NAMES = tuple(SAMPLERS)

# Samplers whose inpaint re-noising uses fresh noise from a CPU generator seeded seed + 1.
RANDOM_INPAINT_SAMPLERS = frozenset({"ddim"})
