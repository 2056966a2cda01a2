"""ComfyUI-compatible sampling over diffusers UNets: schedules, samplers, CFG and KSampler.

Public API:
- `sample(...)`: the KSampler / KSamplerAdvanced entry point (farm.engine.sampling.ksampler).
- `SAMPLER_NAMES`, `SCHEDULER_NAMES`: the combo values, in ComfyUI's order.
- `calculate_sigmas`, `ksampler_sigmas`: schedules, for nodes that expose sigmas.
- `prepare_noise`: the initial noise a seed gives.
"""

from farm.engine.sampling.ksampler import sample
from farm.engine.sampling.noise import prepare_noise
from farm.engine.sampling.samplers import SAMPLER_NAMES
from farm.engine.sampling.schedulers import SCHEDULER_NAMES, calculate_sigmas, ksampler_sigmas

__all__ = ["SAMPLER_NAMES", "SCHEDULER_NAMES", "calculate_sigmas", "ksampler_sigmas", "prepare_noise", "sample"]
