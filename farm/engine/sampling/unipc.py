"""UniPC (Zhao et al. 2023), multistep predictor-corrector with data (x0) prediction, as ComfyUI
runs it for uni_pc (B(h) = h, "bh1") and uni_pc_bh2 (B(h) = e^h - 1).

Invariants:
- The solver works in VP space with continuous time equal to sigma: alpha = 1/sqrt(1 + sigma^2),
  std = sigma * alpha, lambda = log(alpha) - log(std). x_vp = x / sqrt(1 + sigma_0^2) at the start,
  and the result is divided by alpha(last sigma) to return to the VE state.
- A final sigma of 0 is replaced by 0.001 (lambda would be infinite); the result keeps that tiny
  residual, as in ComfyUI.
- order = min(3, len(sigmas) - 2), lower order on the last steps, corrector on every step but the
  last, so the UNet runs len(sigmas) - 1 times; `ctx.step(i)` follows each of those steps.
"""

from __future__ import annotations

import torch


def _log_alpha(sigma):
    return 0.5 * torch.log(1 / (sigma * sigma + 1))


def _alpha(sigma):
    return torch.exp(_log_alpha(sigma))


def _std(sigma):
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma):
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


class _UniPC:
    def __init__(self, model, variant: str):
        self.model = model
        self.variant = variant

    def data_prediction(self, x, sigma):
        # The VE denoiser, seen through an eps prediction of the VP state (ComfyUI's route).
        x_ve = x * (sigma**2 + 1.0) ** 0.5
        eps = (x_ve - self.model(x_ve, sigma)) / sigma
        return (x - _std(sigma) * eps) / _alpha(sigma)

    def update(self, x, model_prev, t_prev, t, order: int, use_corrector: bool):
        """One UniP step to t (and UniC correction with a fresh evaluation at t when asked)."""
        lambda_prev_0 = _lambda(t_prev[-1])
        h = _lambda(t) - lambda_prev_0
        m0 = model_prev[-1]
        rks = []
        d1s = []
        for i in range(1, order):
            rk = (_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(torch.ones_like(h))
        rks = torch.stack(rks)

        # b_k = k! * phi_{k+1}(hh) * hh / B(h) with hh = -h, built by the phi recurrence.
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(rks ** (i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R = torch.stack(rows)
        b = torch.stack(b)

        rhos_p = None
        if d1s:
            # Order 2 uses the simplified coefficient 1/2, as in the reference implementation.
            rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(R, b)

        alpha_t = _alpha(t)
        x_t_ = (_std(t) / _std(t_prev[-1])) * x - alpha_t * h_phi_1 * m0
        pred = sum(r * d for r, d in zip(rhos_p, d1s)) if rhos_p is not None else 0
        x_t = x_t_ - alpha_t * b_h * pred
        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
            x_t = x_t_ - alpha_t * b_h * (corr + rhos_c[-1] * (model_t - m0))
        return x_t, model_t

    def sample(self, x, timesteps, order: int, step):
        n = len(timesteps) - 1
        model_prev, t_prev = [], []
        for step_index in range(n):
            if step_index == 0:
                model_prev = [self.data_prediction(x, timesteps[0])]
                t_prev = [timesteps[0]]
            elif step_index < order:
                # Warm-up: the multistep history is filled with lower orders.
                t = timesteps[step_index]
                x, model_x = self.update(x, model_prev, t_prev, t, step_index, use_corrector=True)
                model_prev.append(model_x)
                t_prev.append(t)
            else:
                # The last loop iteration also takes the final step, which has no corrector and
                # so costs no UNet call.
                last = step_index + 1 if step_index == n - 1 else step_index
                for s in range(step_index, last + 1):
                    t = timesteps[s]
                    step_order = min(order, n + 1 - s)
                    x, model_x = self.update(x, model_prev, t_prev, t, step_order, use_corrector=s != n)
                    # Shift the history; the newest x0 slot is refilled unless this was the last.
                    model_prev = model_prev[1:] + model_prev[-1:]
                    t_prev = t_prev[1:] + [t]
                    if s < n:
                        model_prev[-1] = model_x
            step(step_index)
        return x


def sample_uni_pc(model, x, sigmas, ctx, variant: str = "bh1"):
    timesteps = sigmas.clone()
    if sigmas[-1] == 0:
        timesteps[-1] = 0.001
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    order = min(3, len(timesteps) - 2)
    x = _UniPC(model, variant).sample(x, timesteps, order, ctx.step)
    return x / _alpha(timesteps[-1])


def sample_uni_pc_bh2(model, x, sigmas, ctx):
    return sample_uni_pc(model, x, sigmas, ctx, variant="bh2")
