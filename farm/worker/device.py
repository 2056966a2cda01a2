"""GPU pinning and what a worker reports about its device and memory."""

from __future__ import annotations

import os
import sys

from farm.hostinfo import host_memory


def pin_device(gpu: int | None) -> None:
    """Make only `gpu` visible (or none, for a CPU worker). Must run before torch is imported."""
    if "torch" in sys.modules:
        raise RuntimeError("pin_device() must run before torch is imported")
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)


def visible_gpu_count() -> int:
    """GPUs on this machine, counted without importing torch (farm up decides how many workers)."""
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def device_report() -> dict:
    """Device name, type and memory for the registry (imports torch: workers only)."""
    import torch

    total, free = host_memory()
    report = {"ram_total": total, "ram_free": free, "torch_version": torch.__version__}
    if torch.cuda.is_available():
        free_vram, total_vram = torch.cuda.mem_get_info(0)
        name = f"cuda:0 {torch.cuda.get_device_name(0)}"
        report.update(device_name=name, device_type="cuda", vram_total=total_vram, vram_free=free_vram)
    else:
        report.update(device_name="cpu", device_type="cpu", vram_total=total, vram_free=free)
    return report
