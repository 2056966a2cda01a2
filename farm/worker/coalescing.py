"""How many prompts a worker samples in one coalesced batch, and how.

FARM_COALESCE_MAX fixes the number (1 turns coalescing off). Otherwise a CPU worker does not
coalesce (CPU_GROUP = 1): sampled exactly, a group saves it nothing (bench/coalesce.py: x0.96), and
sampled batched its images would differ from the prompts alone by a pixel level. A GPU worker starts
at FIRST_GPU_GROUP, then measures the device memory each member of a group took at its peak and
takes as many as 80% of the free memory holds, at most MAX_GROUP.
"""

from __future__ import annotations

CPU_GROUP = 1
FIRST_GPU_GROUP = 4
MAX_GROUP = 16


class GroupCapacity:
    def __init__(self, settings, device: str):
        self.fixed = settings.coalesce_max
        self.mode = None if settings.coalesce_mode == "auto" else settings.coalesce_mode
        self.device = str(device)
        self.per_member: float | None = None  # bytes of device memory one member took, measured
        self._base = 0

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def limit(self) -> int:
        if self.fixed is not None:
            return max(1, self.fixed)
        if not self.on_gpu:
            return CPU_GROUP
        if not self.per_member:
            return FIRST_GPU_GROUP
        import torch

        free, _total = torch.cuda.mem_get_info(self.device)
        return max(1, min(MAX_GROUP, int(0.8 * free // self.per_member)))

    def begin(self) -> None:
        """A group starts: measure its peak from here (GPU only)."""
        if self.on_gpu:
            import torch

            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def end(self, members: int) -> None:
        if self.on_gpu and members > 0:
            import torch

            peak = torch.cuda.max_memory_allocated(self.device) - self._base
            if peak > 0:
                self.per_member = max(self.per_member or 0.0, peak / members)
