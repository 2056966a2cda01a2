"""torch.compile for the worker's UNets, compiled in the background per input-shape bucket.

Invariants:
- A prompt never waits for compilation and never fails because of it. The first time a UNet sees
  a bucket (the exact shapes, strides, dtypes and devices of its call: batch, latent H x W,
  context length, dtype ...), that bucket is queued for the compile thread and the call runs on
  the eager UNet. The compile thread compiles `torch.compile(unet, mode=<setting>, dynamic=False)`
  and warms it up with dummy inputs of exactly that bucket (a few calls, so CUDA graphs are
  recorded in "reduce-overhead" / "max-autotune"); only then is the bucket marked ready.
- Ready buckets are served through `torch._dynamo.run(unet)`: it runs the code compiled for the
  bucket when its guards pass and the eager UNet otherwise, and never compiles on the caller's
  thread. A compile or warm-up error, or an error of the compiled code at run time, is logged once
  and leaves that bucket eager for as long as the model is loaded (the failing call is retried on
  the eager UNet).
- A compiled module wraps the UNet's own parameters: when the model cache drops a model or moves
  it off the compute device, `drop(key)` forgets its compiled variants (a compile still running
  for it is discarded when it ends).
- Compiled artifacts survive restarts: `configure_cache` points TORCHINDUCTOR_CACHE_DIR at
  <data_dir>/compile-cache and turns the FX graph cache on, unless the user set those variables;
  the compile thread also loads `torch.compiler` cache artifacts from that folder before its
  first compile and saves them after every successful warm-up. The buckets each model file was
  compiled for are remembered there too (`buckets.pkl`), so a restarted worker that preloads a
  model (`farm worker --preload`) compiles them from those caches before its first prompt
  (`warm`), and serves compiled from that prompt on.
- One compile thread per manager (per worker): buckets compile one at a time, and all CUDA graphs
  land in that thread's cudagraph tree (the main thread replays them once ready).
- Compiled code (dynamo's caches, the cudagraph tree) is used by one thread at a time: the compile
  thread holds `calls` while it compiles and warms up, and the sampler takes it without waiting,
  serving eager when it is held (so even ready buckets run eager while another one compiles).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import struct
import threading
import time
import weakref
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
CACHE_FOLDER = "compile-cache"
ARTIFACTS_FILE = "cache-artifacts.bin"
BUCKETS_FILE = "buckets.pkl"  # {repr(model key): [Bucket, ...]}: what each model was compiled for
# Blobs of earlier runs kept in the artifacts file (each run saves what it compiled or loaded).
KEEP_ARTIFACT_BLOBS = 4
# Dynamo keeps compiled code per Python code object (UNet2DConditionModel.forward, for every
# model and bucket together) and stops compiling a frame past its recompile limit (8).
RECOMPILE_LIMIT = 64
ACCUMULATED_RECOMPILE_LIMIT = 1024


def configure_cache(data_dir: str | os.PathLike) -> Path:
    """Persist inductor's caches under <data_dir>/compile-cache unless the user chose otherwise.

    Call before anything compiles (the environment is read when inductor's config is imported
    and when it writes its caches). Returns the farm's cache folder (where the artifacts file goes).
    """
    folder = Path(data_dir) / CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return folder


def wants_channels_last(flag: bool, device) -> bool:
    """channels_last pays off with cuDNN convolutions (and torch.compile) on CUDA only."""
    return bool(flag) and str(device).startswith("cuda")


def from_settings(settings) -> "CompiledUNets | None":
    """The worker's manager for its settings, or None when compile_unet is "off"."""
    mode = getattr(settings, "compile_unet", "off") or "off"
    if mode == "off":
        return None
    return CompiledUNets(mode, configure_cache(settings.data_dir))


# buckets -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorSpec:
    shape: tuple
    stride: tuple
    dtype: Any
    device: str
    inference: bool = True  # an inference-mode tensor (dynamo guards on its dispatch keys)


def _spec(value):
    """A hashable description of a call argument: tensors by shape/stride/dtype/device."""
    import torch

    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), tuple(value.stride()), value.dtype, str(value.device),
                          value.is_inference())
    if isinstance(value, dict):
        return ("dict", tuple((k, _spec(v)) for k, v in sorted(value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_spec(v) for v in value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot bucket a {type(value).__name__} argument")


@dataclasses.dataclass(frozen=True)
class Bucket:
    """The input signature of one UNet call; one compiled variant (and CUDA graph) per bucket."""

    args: tuple
    kwargs: tuple  # sorted (name, spec)
    inference_mode: bool = True  # the caller's autograd state, which compiled code guards on
    grad_enabled: bool = False

    @classmethod
    def of(cls, args: tuple, kwargs: dict) -> "Bucket":
        import torch

        return cls(tuple(_spec(a) for a in args), tuple((k, _spec(v)) for k, v in sorted(kwargs.items())),
                   torch.is_inference_mode_enabled(), torch.is_grad_enabled())

    def label(self) -> str:
        x = self.args[0] if self.args and isinstance(self.args[0], TensorSpec) else None
        context = dict(self.kwargs).get("encoder_hidden_states")
        parts = []
        if x is not None:
            parts.append(f"batch {x.shape[0]}, latent {'x'.join(map(str, x.shape[2:]))}")
        if isinstance(context, TensorSpec):
            parts.append(f"context {context.shape[1]}")
        if x is not None:
            parts.append(str(x.dtype).removeprefix("torch."))
        return ", ".join(parts) or repr(self)

    def dummy_inputs(self) -> tuple[tuple, dict]:
        """Inputs with this bucket's exact shapes and strides (random values), for the warm-up."""
        return tuple(_dummy(a) for a in self.args), {k: _dummy(v) for k, v in self.kwargs}


def _dummy(spec):
    import torch

    if isinstance(spec, TensorSpec):
        numel = 1 + sum((size - 1) * stride for size, stride in zip(spec.shape, spec.stride)) if all(spec.shape) else 0
        with torch.inference_mode(spec.inference):
            if spec.dtype.is_floating_point:
                base = torch.randn(numel, dtype=spec.dtype, device=spec.device)
            else:
                base = torch.zeros(numel, dtype=spec.dtype, device=spec.device)
            return base.as_strided(spec.shape, spec.stride)
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "dict":
        return {k: _dummy(v) for k, v in spec[1]}
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] in ("list", "tuple"):
        items = [_dummy(v) for v in spec[1]]
        return items if spec[0] == "list" else tuple(items)
    return spec


# the manager ---------------------------------------------------------------------------------
PENDING, READY, FAILED = "pending", "ready", "failed"


@dataclasses.dataclass
class _Variant:
    state: str = PENDING
    serve: Any = None  # the run-only callable, once READY
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)  # set when READY or FAILED
    seconds: float | None = None


class _Model:
    """The compiled variants of one loaded UNet (one model-cache key)."""

    def __init__(self, key, unet):
        self.key = key
        self.unet = weakref.ref(unet)
        self.variants: dict[Bucket, _Variant] = {}
        self.compiled = None  # torch.compile(unet): used by the compile thread only
        self.dropped = False


class CompiledUNets:
    """Background torch.compile of UNets per shape bucket; one per worker, owned by ModelCache."""

    def __init__(self, mode: str = "reduce-overhead", cache_dir: str | os.PathLike | None = None,
                 warmup_calls: int = 3, max_buckets: int = 32):
        if mode not in COMPILE_MODES or mode == "off":
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES[1:])}, not {mode!r}")
        self.mode = mode
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.warmup_calls = warmup_calls
        self.max_buckets = max_buckets
        self._models: dict[Any, _Model] = {}
        self._lock = threading.RLock()
        self.calls = threading.Lock()  # held by whoever runs compiled code (see the invariants)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._jobs = 0
        self._logged: set = set()
        self._artifact_blobs: list[bytes] = []  # earlier runs' blobs, loaded from the artifacts file
        self._started = False

    # what the sampler calls --------------------------------------------------------------------
    def handle(self, key, unet) -> "CompiledHandle":
        """The hook a DiffusionModel carries (`DiffusionModel.compiled`) for this key and UNet."""
        return CompiledHandle(self, key, unet)

    def get(self, key, unet, bucket: Bucket):
        """The compiled callable for this bucket if it is ready, else None (and queue its compile)."""
        with self._lock:
            model = self._models.get(key)
            if model is None or model.unet() is not unet:
                if model is not None:
                    model.dropped = True
                model = self._models[key] = _Model(key, unet)
            variant = model.variants.get(bucket)
            if variant is not None:
                return variant.serve if variant.state == READY else None
            if sum(len(m.variants) for m in self._models.values()) >= self.max_buckets:
                self._log_once(("limit",), logging.WARNING,
                               "torch.compile: %d shape buckets already compiled; %s stays eager",
                               self.max_buckets, bucket.label())
                return None
            model.variants[bucket] = _Variant()
            self._jobs += 1
            self._idle.clear()
            self._ensure_thread()
            self._queue.put((model, bucket))
            log.info("torch.compile (%s) of %s queued for %s; serving eager until it is warm",
                     self.mode, _describe(key), bucket.label())
            return None

    def failed(self, key, unet, bucket: Bucket, error: BaseException) -> None:
        """The compiled code raised at run time: this bucket stays eager."""
        with self._lock:
            model = self._models.get(key)
            if model is not None and model.unet() is unet and bucket in model.variants:
                variant = model.variants[bucket]
                variant.state, variant.serve = FAILED, None
        self._log_once((key, bucket), logging.WARNING, "compiled UNet failed for %s (%s: %s); serving eager",
                       bucket.label(), type(error).__name__, error)

    # what the model cache calls ----------------------------------------------------------------
    def drop(self, key) -> None:
        """Forget the compiled variants of a model (evicted, moved off the device or cleared)."""
        with self._lock:
            model = self._models.pop(key, None)
            if model is not None:
                model.dropped = True
                model.variants.clear()
                model.compiled = None

    def clear(self) -> None:
        with self._lock:
            keys = list(self._models)
        for key in keys:
            self.drop(key)

    # diagnostics and tests ---------------------------------------------------------------------
    def report(self) -> list[dict]:
        with self._lock:
            return [{"model": _describe(model.key), "bucket": bucket.label(), "state": variant.state,
                     "compile_s": variant.seconds}
                    for model in self._models.values() for bucket, variant in model.variants.items()]

    def state(self, key, bucket: Bucket) -> str | None:
        with self._lock:
            model = self._models.get(key)
            variant = model.variants.get(bucket) if model is not None else None
            return variant.state if variant is not None else None

    def warm(self, key, unet, timeout: float | None = None) -> int:
        """Compile the buckets this model was compiled for before (in an earlier run too) and wait
        for them, up to `timeout` seconds; how many are ready. For a worker's start (--preload)."""
        buckets = self._remembered().get(repr(key), [])
        for bucket in buckets:
            self.get(key, unet, bucket)
        self.wait_idle(timeout)
        return sum(self.state(key, bucket) == READY for bucket in buckets)

    def _remembered(self) -> dict:
        import pickle

        path = self.cache_dir / BUCKETS_FILE if self.cache_dir is not None else None
        if path is None or not path.exists():
            return {}
        try:
            found = pickle.loads(path.read_bytes())  # written by this farm's workers only
        except Exception as exc:  # noqa: BLE001 - a stale or corrupt file only costs compile time
            log.warning("could not read the remembered compile buckets in %s: %s", path, exc)
            return {}
        return found if isinstance(found, dict) else {}

    def _remember(self, key, bucket: Bucket) -> None:
        import pickle

        if self.cache_dir is None:
            return
        remembered = self._remembered()
        known = remembered.setdefault(repr(key), [])
        if bucket in known:
            return
        known.append(bucket)
        path = self.cache_dir / BUCKETS_FILE
        try:
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(remembered))
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not remember a compile bucket in %s: %s", path, exc)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no compile is queued or running (True), or the timeout passes (False)."""
        return self._idle.wait(timeout)

    def busy(self) -> bool:
        return not self._idle.is_set()

    # the compile thread ------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="farm-compile", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        if not self._started:
            self._started = True
            try:
                self._prepare()
            except Exception:  # noqa: BLE001 - compile without the saved artifacts
                log.exception("torch.compile set-up failed")
        while True:
            model, bucket = self._queue.get()
            try:
                self._compile(model, bucket)
            except BaseException:  # noqa: BLE001 - nothing may kill this thread
                log.exception("torch.compile thread error")
            finally:
                with self._lock:
                    self._jobs -= 1
                    if self._jobs == 0:
                        self._idle.set()

    def _prepare(self) -> None:
        """Once, before the first compile: dynamo's limits and the saved cache artifacts."""
        try:
            import torch._dynamo

            config = torch._dynamo.config
            config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
            config.accumulated_recompile_limit = max(config.accumulated_recompile_limit,
                                                     ACCUMULATED_RECOMPILE_LIMIT)
        except Exception as exc:  # noqa: BLE001 - an older torch without these knobs
            log.debug("dynamo limits left alone: %s", exc)
        self._load_artifacts()

    def _compile(self, model: _Model, bucket: Bucket) -> None:
        import torch

        unet = model.unet()
        if model.dropped or unet is None:
            return
        started = time.perf_counter()
        label = bucket.label()
        try:
            device = bucket.args[0].device if bucket.args and isinstance(bucket.args[0], TensorSpec) else "cpu"
            with self.calls, _on_device(device):
                compiled = model.compiled
                if compiled is None:
                    compiled = model.compiled = torch.compile(unet, mode=self.mode, dynamic=False)
                args, kwargs = bucket.dummy_inputs()
                # The caller's autograd state: this thread's own (grad and inference mode are
                # thread-local), and part of what the compiled code guards on.
                with torch.inference_mode(bucket.inference_mode), torch.set_grad_enabled(bucket.grad_enabled):
                    for _ in range(max(1, self.warmup_calls)):
                        if model.dropped:  # evicted or moved off the device meanwhile: stop here
                            break
                        compiled(*args, **kwargs)
                if device.startswith("cuda"):
                    torch.cuda.synchronize(device)
            serve = torch._dynamo.run(unet)
            error = None
        except Exception as exc:  # noqa: BLE001 - compile errors must never reach a prompt
            serve, error = None, exc
        seconds = time.perf_counter() - started
        with self._lock:
            variant = model.variants.get(bucket)
            if model.dropped or variant is None:
                log.info("torch.compile for %s finished after its model left the device; discarded", label)
                return
            variant.seconds = seconds
            if error is None:
                variant.state, variant.serve = READY, serve
            else:
                variant.state = FAILED
            variant.ready.set()
        if error is not None:
            self._log_once((model.key, bucket), logging.WARNING,
                           "torch.compile (%s) failed for %s (%s: %s); that shape stays eager",
                           self.mode, label, type(error).__name__, error)
            log.debug("torch.compile failure", exc_info=error)
            return
        log.info("torch.compile (%s) of %s ready for %s after %.1f s", self.mode, _describe(model.key), label, seconds)
        self._save_artifacts()
        self._remember(model.key, bucket)

    # cache artifacts ---------------------------------------------------------------------------
    @property
    def artifacts_path(self) -> Path | None:
        return self.cache_dir / ARTIFACTS_FILE if self.cache_dir is not None else None

    def _load_artifacts(self) -> None:
        path = self.artifacts_path
        if path is None or not path.exists():
            return
        try:
            import torch.compiler

            if not hasattr(torch.compiler, "load_cache_artifacts"):
                return
            blobs = _read_blobs(path.read_bytes())
            for blob in blobs:
                torch.compiler.load_cache_artifacts(blob)
            self._artifact_blobs = blobs[-(KEEP_ARTIFACT_BLOBS - 1):] if KEEP_ARTIFACT_BLOBS > 1 else []
            log.info("loaded %d torch.compile cache artifact set(s) from %s", len(blobs), path)
        except Exception as exc:  # noqa: BLE001 - a stale or corrupt file only costs compile time
            log.warning("could not load torch.compile cache artifacts from %s: %s", path, exc)

    def _save_artifacts(self) -> None:
        path = self.artifacts_path
        if path is None:
            return
        try:
            import torch.compiler

            if not hasattr(torch.compiler, "save_cache_artifacts"):
                return
            saved = torch.compiler.save_cache_artifacts()
            if saved is None:
                return
            # This run's blob holds everything it compiled or hit in the caches; earlier runs'
            # blobs are kept (a few) for buckets this run has not used.
            data = _write_blobs([blob for blob in self._artifact_blobs if blob != saved[0]] + [saved[0]])
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not save torch.compile cache artifacts to %s: %s", path, exc)

    def _log_once(self, what, level, message, *args) -> None:
        with self._lock:
            if what in self._logged:
                return
            self._logged.add(what)
        log.log(level, message, *args)


class CompiledHandle:
    """`DiffusionModel.compiled`: call the compiled UNet for this bucket when ready, else eager."""

    def __init__(self, manager: CompiledUNets, key, unet):
        self.manager = manager
        self.key = key
        self._unet = weakref.ref(unet)

    def __call__(self, unet, *args, **kwargs):
        if unet is not self._unet():  # a model whose UNet was replaced after this hook was made
            return unet(*args, **kwargs)
        try:
            bucket = Bucket.of(args, kwargs)
        except TypeError:
            return unet(*args, **kwargs)
        serve = self.manager.get(self.key, unet, bucket)
        # Never wait: while the compile thread runs compiled code, this call runs eager.
        if serve is None or not self.manager.calls.acquire(blocking=False):
            return unet(*args, **kwargs)
        try:
            return serve(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - never fail a prompt because of compile
            error = exc
        finally:
            self.manager.calls.release()
        self.manager.failed(self.key, unet, bucket, error)
        return unet(*args, **kwargs)


def run_unet(model, *args, **kwargs):
    """Call `model`'s UNet: through its compiled variants when the model cache attached them."""
    hook = getattr(model, "compiled", None)
    if hook is None:
        return model.unet(*args, **kwargs)
    return hook(model.unet, *args, **kwargs)


def _on_device(device: str):
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.cuda.device(torch.device(device))
    return contextlib.nullcontext()


def _describe(key) -> str:
    """A short name for a model-cache key ((base key, loras))."""
    try:
        base, loras = key
        name = Path(str(base[0])).name if isinstance(base, tuple) and base else str(base)
        return name + "".join(f"+{Path(p.path).name}" for p in loras)
    except (TypeError, ValueError, AttributeError):
        return str(key)


def _write_blobs(blobs: list[bytes]) -> bytes:
    return b"FARMCC1\n" + b"".join(struct.pack("<Q", len(b)) + b for b in blobs)


def _read_blobs(data: bytes) -> list[bytes]:
    if not data.startswith(b"FARMCC1\n"):
        raise ValueError("not a farm compile-cache artifacts file")
    blobs, offset = [], 8
    while offset < len(data):
        (size,) = struct.unpack_from("<Q", data, offset)
        offset += 8
        if offset + size > len(data):
            raise ValueError("truncated artifacts file")
        blobs.append(data[offset:offset + size])
        offset += size
    return blobs
