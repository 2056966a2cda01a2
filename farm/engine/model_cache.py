"""The worker's model cache: loaded checkpoints, VAEs and LoRA-patched models, kept under a budget.

Invariants:
- An entry is keyed by what makes it unique: the file (resolved path, size, modification time),
  the component and, for patched models, the base entry and the sorted (LoRA file, strength)
  list. A file that changes on disk is loaded again.
- Entries live on the compute device while the device budget allows. The least recently used
  entry not used by the running prompt is moved to host RAM first (second tier, its own budget),
  and dropped from there last. A component used by the running prompt is never evicted.
- `loads` counts loads from disk, so tests (and the heartbeat) can tell a cache hit from a load.
- With a `compiler` (farm.engine.compiled.CompiledUNets), every DiffusionModel the cache hands out
  carries a hook to its compiled variants (keyed by its base key and LoRA patches); an entry that
  is dropped or moved off the device drops its compiled variants too (they wrap its parameters).
- With `channels_last` on a CUDA device, UNets and VAEs are kept in channels_last memory format.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Entry:
    value: Any  # a tuple of components (DiffusionModel / TextEncoders / Autoencoder ...)
    bytes: int
    label: str
    on_device: bool = True


def _modules(value) -> list:
    """The torch modules inside a cached value (a component or a tuple of components)."""
    found = []
    for part in value if isinstance(value, tuple) else (value,):
        if part is None:
            continue
        for attribute in ("unet", "vae"):
            if hasattr(part, attribute):
                found.append(getattr(part, attribute))
        if hasattr(part, "encoders"):
            found.extend(part.encoders.values())
    return found


def _size(value) -> int:
    """Bytes of distinct storage: a LoRA-patched copy shares its unpatched weights with the base."""
    seen, total = set(), 0
    for module in _modules(value):
        for tensor in list(module.parameters()) + list(module.buffers()):
            pointer = tensor.untyped_storage().data_ptr()
            if pointer not in seen:
                seen.add(pointer)
                total += tensor.untyped_storage().nbytes()
    return total


def _compile_key(model) -> tuple:
    """The compiled-variants key of a DiffusionModel: its base weights and LoRA patches."""
    return (model.key, model.loras)


def file_key(path: str | os.PathLike, component: str) -> tuple:
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return (str(resolved), stat.st_size, stat.st_mtime_ns, component)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_budgets(device: str) -> tuple[int, int]:
    """(device budget, host-RAM budget): 80% of the free GPU memory, half of the available RAM."""
    from farm.hostinfo import host_memory

    _total, available = host_memory()
    if device == "cpu":
        return int(available * 0.5), 0
    import torch

    free, _total_vram = torch.cuda.mem_get_info()
    return int(free * 0.8), int(available * 0.5)


class ModelCache:
    def __init__(self, models_dir: str | os.PathLike, device: str | None = None,
                 device_budget: int | None = None, host_budget: int | None = None,
                 compiler=None, channels_last: bool = True):
        from farm.engine.compiled import wants_channels_last

        self.models_dir = Path(models_dir)
        self.device = device or default_device()
        self.compiler = compiler  # CompiledUNets or None (no torch.compile)
        self.channels_last = wants_channels_last(channels_last, self.device)
        budgets = default_budgets(self.device)
        self.device_budget = budgets[0] if device_budget is None else device_budget
        self.host_budget = budgets[1] if host_budget is None else host_budget
        self.loads = 0
        # Observers (metrics): on_load(kind, seconds) for a load from disk, on_hit(kind) for a reuse.
        self.on_load: Callable[[str, float], None] | None = None
        self.on_hit: Callable[[str], None] | None = None
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        self._in_use: set[tuple] = set()
        self._lock = threading.RLock()
        # What report() returns, rebuilt after every change: reading it never waits for the lock,
        # which a checkpoint load holds for seconds.
        self._report: list[dict] = []

    # what nodes call --------------------------------------------------------------------------
    def checkpoint(self, path: str | os.PathLike):
        """(MODEL, CLIP, VAE) of a single-file checkpoint."""
        from farm.engine.checkpoints import load_checkpoint

        return self._get(file_key(path, "checkpoint"), Path(path).name,
                         lambda: load_checkpoint(path, device=self.device, **self._dtypes()))

    def vae(self, path: str | os.PathLike):
        from farm.engine.checkpoints import load_vae

        (autoencoder,) = self._get(file_key(path, "vae"), Path(path).name,
                                   lambda: (load_vae(path, device=self.device, dtype=self._dtypes()["vae_dtype"]),))
        return autoencoder

    def with_loras(self, model, clip, patches) -> tuple:
        """`model` and `clip` with LoRA `patches` applied, cached as their own entry."""
        from farm.engine.loras import apply_loras

        active = tuple(patch for patch in patches if patch.strength != 0)
        if not active:
            return model, clip
        # The inputs' own patches are part of the key: B on top of (base + A) is not B on base.
        key = ("loras",
               (model.key, model.loras) if model is not None else None,
               (clip.key, clip.loras) if clip is not None else None,
               tuple(sorted((str(p.path), p.strength) for p in active)))
        label = "+".join(Path(p.path).name for p in active)
        return self._get(key, label, lambda: apply_loras(model, clip, active), counts_as_load=False)

    def use(self, *components) -> None:
        """Make sure these components (from this cache) are on the device and stay there for the
        running prompt; a node calls this before computing with a MODEL, CLIP or VAE, which may
        come from the execution cache after the model cache moved it to host RAM."""
        with self._lock:
            # Match on the torch modules: CLIPSetLastLayer and friends return new wrapper objects
            # around the same cached modules.
            wanted = {id(module) for module in _modules(tuple(components))}
            for key, entry in self._entries.items():
                if wanted & {id(module) for module in _modules(entry.value)}:
                    self._in_use.add(key)
                    if not entry.on_device:
                        self._move(entry, self.device)
            self._fit()

    # prompt boundaries -----------------------------------------------------------------------
    def begin_prompt(self) -> None:
        with self._lock:
            self._in_use.clear()

    def end_prompt(self) -> None:
        with self._lock:
            self._in_use.clear()
            self._fit()

    def clear(self) -> None:
        """POST /free, or after running out of memory: drop every model."""
        with self._lock:
            self._entries.clear()
            self._in_use.clear()
            self._snapshot()
            if self.compiler is not None:
                self.compiler.clear()
        gc.collect()
        self._empty_device_cache()

    def report(self) -> list[dict]:
        """What the worker reports: the loaded models, where they are, their size, and for files
        under the models folder, their "folder/relative path" (what dispatch affinity matches)."""
        return self._report

    def _snapshot(self) -> None:
        report = []
        for key, entry in self._entries.items():
            item = {"name": entry.label, "component": key[3] if len(key) > 3 and key[0] != "loras" else "loras",
                    "bytes": entry.bytes, "device": self.device if entry.on_device else "cpu"}
            if key[0] != "loras":
                item["file"] = self._relative(key[0])
            report.append(item)
        self._report = report

    def _relative(self, path: str) -> str | None:
        try:
            return Path(path).relative_to(self.models_dir.resolve()).as_posix()
        except ValueError:
            return None

    # internals -------------------------------------------------------------------------------
    def _dtypes(self) -> dict:
        import torch

        if self.device == "cpu":
            return {"unet_dtype": torch.float32, "clip_dtype": torch.float32, "vae_dtype": torch.float32}
        # fp16 UNet. Text encoders compute in fp32 as ComfyUI's do: keeping them fp32 avoids an
        # upcast copy of their weights on every encode. The SD/SDXL VAE overflows in fp16: bf16.
        vae_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return {"unet_dtype": torch.float16, "clip_dtype": torch.float32, "vae_dtype": vae_dtype}

    def _get(self, key: tuple, label: str, load: Callable[[], Any], counts_as_load: bool = True):
        kind = key[-1] if key and isinstance(key[-1], str) else "model"
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                started = time.perf_counter()
                value = load()
                if counts_as_load:
                    self.loads += 1
                    if self.on_load is not None:
                        self.on_load(kind, time.perf_counter() - started)
            elif self.on_hit is not None:
                self.on_hit(kind)
            if entry is None:
                self._prepare(value)
                entry = _Entry(value, _size(value), label)
                self._entries[key] = entry
                log.info("loaded %s (%.1f MB)", label, entry.bytes / 2**20)
            self._entries.move_to_end(key)
            self._in_use.add(key)
            if not entry.on_device:
                self._move(entry, self.device)
            self._fit()
            return entry.value

    def _fit(self) -> None:
        """Evict least recently used entries not in use: device -> host RAM -> dropped."""
        def used(on_device: bool) -> int:
            return sum(e.bytes for e in self._entries.values() if e.on_device == on_device)

        for key in list(self._entries):
            if used(True) <= self.device_budget:
                break
            entry = self._entries[key]
            if key in self._in_use or not entry.on_device:
                continue
            if self.device != "cpu" and entry.bytes <= self.host_budget:
                self._move(entry, "cpu")
            else:
                del self._entries[key]
                self._drop_compiled(entry)
                log.info("dropped %s from the model cache", entry.label)
        for key in list(self._entries):
            if used(False) <= self.host_budget:
                break
            entry = self._entries[key]
            if not entry.on_device and key not in self._in_use:
                del self._entries[key]
                self._drop_compiled(entry)
                log.info("dropped %s from host memory", entry.label)
        self._snapshot()
        self._empty_device_cache()

    def _move(self, entry: _Entry, device: str) -> None:
        if device != self.device:
            self._drop_compiled(entry)
        for module in _modules(entry.value):
            module.to(device)
        entry.on_device = device == self.device

    def _prepare(self, value) -> None:
        """A freshly loaded value: channels_last UNet and VAE on CUDA, compile hooks on its models."""
        from farm.engine.types import DiffusionModel

        for part in value if isinstance(value, tuple) else (value,):
            if self.channels_last:
                import torch

                for attribute in ("unet", "vae"):
                    module = getattr(part, attribute, None)
                    if module is not None:
                        module.to(memory_format=torch.channels_last)
            if isinstance(part, DiffusionModel):
                # A LoRA-patched model is a dataclasses.replace copy of its base: replace the
                # base's hook, which belongs to another UNet.
                part.compiled = (self.compiler.handle(_compile_key(part), part.unet)
                                 if self.compiler is not None else None)

    def _drop_compiled(self, entry: _Entry) -> None:
        from farm.engine.types import DiffusionModel

        if self.compiler is None:
            return
        for part in entry.value if isinstance(entry.value, tuple) else (entry.value,):
            if isinstance(part, DiffusionModel):
                self.compiler.drop(_compile_key(part))

    def _empty_device_cache(self) -> None:
        if self.device != "cpu":
            if self.compiler is not None and self.compiler.busy():
                return  # not while the compile thread may be recording a CUDA graph
            import torch

            torch.cuda.empty_cache()
