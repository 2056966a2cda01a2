"""Which GPUs a worker may use, pinning one, and what a worker reports about its device and memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Mapping

from farm.hostinfo import host_memory

# A GPU id is what CUDA_VISIBLE_DEVICES accepts for one device: an index ("0") or a UUID
# ("GPU-5d5b...", "MIG-c6d4..."). Workers keep ids as strings; only the registry wants an index.
GpuId = str

_GPU_LINE = re.compile(r"^GPU (\d+):")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")


class GpuSelectionError(ValueError):
    """A --gpus / --gpu choice that names no visible GPU (the CLI exits with code 2)."""


def pin_device(gpu: GpuId | int | None) -> None:
    """Make only `gpu` visible (or none, for a CPU worker). Must run before torch is imported."""
    if "torch" in sys.modules:
        raise RuntimeError("pin_device() must run before torch is imported")
    # Indices mean what nvidia-smi shows (PCI bus order); CUDA's own default order may differ.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)


def gpu_index(gpu: GpuId | int | None) -> int | None:
    """The index a worker reports for its GPU: the id when numeric, else None (a UUID)."""
    return int(gpu) if gpu is not None and str(gpu).strip().isdigit() else None


def visible_gpus(env: Mapping[str, str] | None = None) -> list[GpuId]:
    """The GPUs this host lets the farm use, in order, without importing torch.

    When CUDA_VISIBLE_DEVICES is set, its entries (an empty value means no GPU), as CUDA itself
    would restrict them; otherwise what `nvidia-smi -L` lists: each GPU's index, or the UUIDs of
    its MIG instances when it is partitioned (a CUDA process can use only one instance).
    """
    env = os.environ if env is None else env
    chosen = env.get("CUDA_VISIBLE_DEVICES")
    if chosen is not None:
        return [entry.strip() for entry in chosen.split(",") if entry.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else []


def parse_nvidia_smi(listing: str) -> list[GpuId]:
    """GPU ids from `nvidia-smi -L` output (see `visible_gpus`)."""
    gpus: list[tuple[str, list[str]]] = []
    for line in listing.splitlines():
        if match := _GPU_LINE.match(line):
            gpus.append((match.group(1), []))
        elif (match := _MIG_LINE.match(line)) and gpus:
            gpus[-1][1].append(match.group(1))
    return [gpu for index, migs in gpus for gpu in (migs or [index])]


def select_gpus(spec: str, visible: list[GpuId]) -> list[GpuId]:
    """`--gpus` resolved against the visible GPUs: "all", or comma-separated ids among them."""
    if spec.strip() == "all":
        if not visible:
            raise GpuSelectionError("no GPU is visible (CUDA_VISIBLE_DEVICES or nvidia-smi -L); use --cpu")
        return list(visible)
    wanted = list(dict.fromkeys(entry.strip() for entry in spec.split(",") if entry.strip()))
    if not wanted:
        raise GpuSelectionError("--gpus needs 'all' or comma-separated GPU ids, e.g. --gpus 0,2")
    unknown = [gpu for gpu in wanted if gpu not in visible]
    if unknown:
        raise GpuSelectionError(f"unknown GPU id {', '.join(unknown)}; visible GPUs: {', '.join(visible) or 'none'}")
    return wanted


def check_gpu(gpu: GpuId, env: Mapping[str, str] | None = None) -> GpuId:
    """`--gpu`: any id, but one among CUDA_VISIBLE_DEVICES when the user restricted the GPUs."""
    env = os.environ if env is None else env
    gpu = gpu.strip()
    if not gpu or "," in gpu or gpu == "all":
        raise GpuSelectionError("--gpu takes one GPU id (use --gpus for several)")
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        select_gpus(gpu, visible_gpus(env))
    return gpu


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
