"""Where every random number in sampling comes from, seeded as ComfyUI seeds it.

Invariants (spec 2.2 and 2.6):
- The initial noise is drawn on the CPU from a generator seeded with `seed`, float32, the whole
  batch in one draw; with a "batch_index" list, images are drawn one at a time up to the largest
  index and picked by index, so an image keeps its noise when taken out of a batch.
- Ancestral samplers draw step noise from a generator on the sampler's device seeded with the same
  seed (so GPU and CPU results differ, as in ComfyUI).
- The SDE samplers draw from one Brownian tree on the CPU (torchsde, entropy = seed) spanning
  [smallest non-zero sigma, largest sigma] for the whole batch, so they are device-independent.
- ddim's inpaint re-noising uses its own CPU generator seeded seed + 1.
"""

from __future__ import annotations

import warnings

import torch


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator in the same state as the global one after torch.manual_seed(seed)."""
    return torch.Generator(device="cpu").manual_seed(seed)


def prepare_noise(latent: torch.Tensor, seed: int, batch_index=None) -> torch.Tensor:
    """Initial noise (float32, CPU) shaped like `latent`."""
    generator = cpu_generator(seed)
    if batch_index is None:
        return torch.randn(latent.shape, dtype=torch.float32, generator=generator, device="cpu").to(latent.dtype)
    wanted = sorted(set(int(i) for i in batch_index))
    draws = {}
    for i in range(wanted[-1] + 1):
        # Every index up to the largest is drawn, even unused ones, to keep the stream aligned.
        noise = torch.randn([1, *latent.shape[1:]], dtype=torch.float32, generator=generator, device="cpu")
        if i in wanted:
            draws[i] = noise
    return torch.cat([draws[int(i)] for i in batch_index], dim=0).to(latent.dtype)


def default_noise_sampler(x: torch.Tensor, seed: int | None):
    """Step noise from a generator on x's device seeded with `seed` (unseeded: global RNG)."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)

    def sample(sigma, sigma_next):
        return torch.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample


class BrownianTreeNoiseSampler:
    """Unit-variance increments of one CPU Brownian tree over sigma.

    A query (sigma, sigma_next) returns (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|).
    The tree is built on the first query: a one-step schedule never queries it, and torchsde would
    reject its empty interval.
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: int | None):
        self.shape = x.shape
        self.device = x.device
        self.dtype = x.dtype
        self.t0 = torch.as_tensor(sigma_min).detach().cpu().float()
        self.t1 = torch.as_tensor(sigma_max).detach().cpu().float()
        self.seed = seed if seed is not None else int(torch.randint(0, 2**63 - 1, ()).item())
        self._tree = None

    def _get_tree(self):
        if self._tree is None:
            import torchsde

            w0 = torch.zeros(self.shape, dtype=self.dtype, device="cpu")
            self._tree = torchsde.BrownianTree(self.t0, w0, self.t1, entropy=self.seed)
        return self._tree

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        a = torch.as_tensor(sigma).detach().cpu().float()
        b = torch.as_tensor(sigma_next).detach().cpu().float()
        lo, hi = (a, b) if a <= b else (b, a)
        sign = 1.0 if a <= b else -1.0
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends to 6 decimals and warns (then clamps) when a float32
            # sigma_max lies just past the rounded end; the clamp is what ComfyUI gets too.
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            increment = self._get_tree()(lo, hi) * sign
        scale = (b - a).abs().sqrt()
        return (increment / scale).to(device=self.device, dtype=self.dtype)
