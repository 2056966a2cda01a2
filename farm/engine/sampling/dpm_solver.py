"""DPM-Solver "fast" (Lu et al. 2022, the fixed-order single-step split), as ComfyUI's dpm_fast.

Invariants:
- Time is t = -log(sigma); the n UNet evaluations are spread over m = n // 3 + 1 equal intervals in
  t, all third order except the tail: [.., 2, 1] when 3 divides n, else [.., n % 3].
- It runs from sigma_max down to sigma_min and stops there (no final step to sigma 0), with
  eta = 0, so it draws no noise.
- `ctx.step(k)` is called after each UNet evaluation (k = 0 .. n - 1), the solver's own unit of
  progress.
"""

from __future__ import annotations

import math

import torch


class _EpsCache:
    """The noise prediction at (x, t), evaluated once per key within one solver step."""

    def __init__(self, model, ctx):
        self.model = model
        self.ctx = ctx
        self.evals = 0

    def eps(self, cache: dict, key: str, x, t):
        if key not in cache:
            sigma = (-t).exp()
            cache[key] = (x - self.model(x, sigma)) / sigma
            self.ctx.step(self.evals)
            self.evals += 1
        return cache[key]


def _sigma(t):
    return (-t).exp()


def _step_1(ev, cache, x, t, t_next):
    """DPM-Solver-1 (DDIM): first order in t."""
    h = t_next - t
    eps = ev.eps(cache, "eps", x, t)
    return x - _sigma(t_next) * h.expm1() * eps


def _step_2(ev, cache, x, t, t_next, r1=1 / 2):
    """DPM-Solver-2: one intermediate evaluation at t + r1 * h."""
    h = t_next - t
    eps = ev.eps(cache, "eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = ev.eps(cache, "eps_r1", u1, s1)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)


def _step_3(ev, cache, x, t, t_next, r1=1 / 3, r2=2 / 3):
    """DPM-Solver-3: intermediate evaluations at t + h/3 and t + 2h/3."""
    h = t_next - t
    eps = ev.eps(cache, "eps", x, t)
    s1 = t + r1 * h
    s2 = t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = ev.eps(cache, "eps_r1", u1, s1)
    u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
          - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
    eps_r2 = ev.eps(cache, "eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def sample_dpm_fast(model, x, sigma_min, sigma_max, n: int, ctx):
    """Integrate from sigma_max to sigma_min with exactly n UNet evaluations."""
    if float(sigma_min) <= 0 or float(sigma_max) <= 0:
        raise ValueError("dpm_fast needs positive sigma_min and sigma_max")
    t_start = -torch.as_tensor(sigma_max, device=x.device).float().log()
    t_end = -torch.as_tensor(sigma_min, device=x.device).float().log()
    m = math.floor(n / 3) + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
    if n % 3 == 0:
        orders = [3] * (m - 2) + [2, 1]
    else:
        orders = [3] * (m - 1) + [n % 3]
    ev = _EpsCache(model, ctx)
    steps = {1: _step_1, 2: _step_2, 3: _step_3}
    for i, order in enumerate(orders):
        x = steps[order](ev, {}, x, ts[i], ts[i + 1])
    return x
