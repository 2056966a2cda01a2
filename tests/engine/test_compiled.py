"""torch.compile of the worker's UNets: eager until the background warm-up ends, then compiled;
failures stay eager, eviction drops compiled variants, caches persist under the data dir.

Compiles run on the CPU (inductor's C++ backend) with a toy UNet, one real compile in the file.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchsde")

import torch.nn.functional as F  # noqa: E402

from farm.config import load_settings, settings_environment  # noqa: E402
from farm.engine import compiled as compiled_module  # noqa: E402
from farm.engine.compiled import (  # noqa: E402
    ARTIFACTS_FILE, FAILED, PENDING, READY, Bucket, CompiledUNets, configure_cache, from_settings, run_unet,
    wants_channels_last)
from farm.engine.model_cache import ModelCache  # noqa: E402
from farm.engine.sampling import sample  # noqa: E402
from farm.engine.types import DiffusionModel, LoraPatch  # noqa: E402

CONTEXT_DIM = 16
WAIT = 300  # seconds: a cold inductor compile on a small CPU


class ToyUNet(torch.nn.Module):
    """The UNet call signature with a few real kernels; counts the calls that ran eagerly."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv_in = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.proj = torch.nn.Linear(CONTEXT_DIM, 8)
        self.conv_out = torch.nn.Conv2d(8, 4, 3, padding=1)
        self.eager_calls = 0
        self.requires_grad_(False).eval()

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=True):
        if not torch.compiler.is_compiling():  # traced away in the compiled code
            self.eager_calls += 1
        h = self.conv_in(sample)
        h = h + self.proj(encoder_hidden_states).mean(1)[:, :, None, None] + timestep[:, None, None, None] * 1e-3
        return (self.conv_out(F.silu(h)),)


def toy_model(unet, key=("toy",)) -> DiffusionModel:
    return DiffusionModel(unet=unet, family="sd1", prediction="eps", key=key)


def attach(manager: CompiledUNets, model: DiffusionModel) -> DiffusionModel:
    model.compiled = manager.handle((model.key, model.loras), model.unet)
    return model


def cond(value: float) -> list:
    return [[torch.full([1, 77, CONTEXT_DIM], value), {}]]


def run_sample(model, seed=3):
    latent = {"samples": torch.zeros([1, 4, 8, 8])}
    return sample(model, seed, 4, 7.0, "euler", "normal", cond(0.5), cond(-0.5), latent)["samples"]


def unet_inputs(batch=2, size=8):
    """UNet arguments as the sampler makes them: inference tensors, an expanded timestep."""
    with torch.inference_mode():
        return (torch.randn(batch, 4, size, size), torch.tensor(500.0).expand(batch)), \
            {"encoder_hidden_states": torch.randn(batch, 77, CONTEXT_DIM), "return_dict": False}


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile that compiles nothing (the wiring tests need no inductor)."""
    calls = []

    def compile(module, **kwargs):
        calls.append(kwargs)
        return module

    monkeypatch.setattr(torch, "compile", compile)
    return calls


# the real compile ----------------------------------------------------------------------------
def test_eager_until_warm_then_compiled_with_the_same_results(tmp_path):
    manager = CompiledUNets("default", tmp_path, warmup_calls=2)
    unet = ToyUNet()
    model = attach(manager, toy_model(unet))
    eager = run_sample(toy_model(ToyUNet()))  # the same weights, never compiled

    started = time.perf_counter()
    first = run_sample(model)
    first_seconds = time.perf_counter() - started
    # The prompt did not wait: the compile thread is still busy with the bucket it just saw.
    assert manager.busy()
    bucket_states = manager.report()
    assert [(r["bucket"], r["state"]) for r in bucket_states] == [("batch 2, latent 8x8, context 77, float32", PENDING)]
    assert unet.eager_calls == 4  # every step ran eagerly
    torch.testing.assert_close(first, eager, rtol=0, atol=0)

    assert manager.wait_idle(WAIT)
    assert [r["state"] for r in manager.report()] == [READY]
    assert first_seconds < manager.report()[0]["compile_s"]
    compiled = run_sample(model)
    assert unet.eager_calls == 4  # all 4 steps ran the compiled code
    # Latents in raw VAE units (~25 here): compare relative to their size.
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    # The UNet output itself, in the sampler's bucket (batch 2, expanded timestep).
    args, kwargs = unet_inputs()
    with torch.inference_mode():
        expected = unet(*args, **kwargs)[0]
        calls = unet.eager_calls
        torch.testing.assert_close(run_unet(model, *args, **kwargs)[0], expected, rtol=0, atol=1e-4)
    assert unet.eager_calls == calls
    assert (tmp_path / ARTIFACTS_FILE).stat().st_size > 0  # saved after the warm-up

    # Another shape is another bucket: eager (and queued) while the ready one stays compiled.
    args, kwargs = unet_inputs(batch=1)
    with torch.inference_mode():
        run_unet(model, *args, **kwargs)
        bucket = Bucket.of(args, kwargs)
    assert unet.eager_calls == calls + 1
    assert manager.state((model.key, ()), bucket) == PENDING
    manager.wait_idle(WAIT)

    # Dropping the model lets the UNet go: nothing compiled keeps it (or its weights) alive.
    alive = weakref.ref(unet)
    manager.drop((model.key, ()))
    assert manager.report() == []
    del model, unet
    gc.collect()
    assert alive() is None


# failures ------------------------------------------------------------------------------------
def test_a_failing_compile_leaves_the_bucket_eager_and_is_logged_once(monkeypatch, tmp_path, caplog):
    def broken(module, **kwargs):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(torch, "compile", broken)
    manager = CompiledUNets("default", tmp_path)
    unet = ToyUNet()
    model = attach(manager, toy_model(unet))
    args, kwargs = unet_inputs()
    with caplog.at_level(logging.WARNING, logger="farm.engine.compiled"):
        with torch.inference_mode():
            bucket = Bucket.of(args, kwargs)
            expected = unet(*args, **kwargs)[0]
            for _ in range(3):
                out = run_unet(model, *args, **kwargs)[0]
                assert manager.wait_idle(WAIT)
                torch.testing.assert_close(out, expected)
    assert manager.state((model.key, ()), bucket) == FAILED
    failures = [r for r in caplog.records if "inductor exploded" in r.getMessage()]
    assert len(failures) == 1 and "stays eager" in failures[0].getMessage()
    assert unet.eager_calls == 4  # the reference call and three prompts' calls
    assert not (tmp_path / ARTIFACTS_FILE).exists()


def test_compiled_code_that_fails_at_run_time_falls_back_to_eager(monkeypatch, tmp_path, fake_compile, caplog):
    class Broken:
        def __call__(self, *args, **kwargs):
            raise RuntimeError("CUDA graph replay failed")

    monkeypatch.setattr(torch._dynamo, "run", lambda module: Broken())
    manager = CompiledUNets("reduce-overhead", tmp_path)
    unet = ToyUNet()
    model = attach(manager, toy_model(unet))
    args, kwargs = unet_inputs()
    with torch.inference_mode():
        expected = unet(*args, **kwargs)[0]
        run_unet(model, *args, **kwargs)
        assert manager.wait_idle(WAIT)
        assert manager.state((model.key, ()), Bucket.of(args, kwargs)) == READY
        with caplog.at_level(logging.WARNING, logger="farm.engine.compiled"):
            outs = [run_unet(model, *args, **kwargs)[0] for _ in range(2)]
        assert manager.state((model.key, ()), Bucket.of(args, kwargs)) == FAILED
    for out in outs:
        torch.testing.assert_close(out, expected)
    assert len([r for r in caplog.records if "replay failed" in r.getMessage()]) == 1
    assert fake_compile == [{"mode": "reduce-overhead", "dynamic": False}]


def test_a_model_whose_unet_was_replaced_runs_its_own_unet(tmp_path, fake_compile):
    manager = CompiledUNets("default", tmp_path)
    base = attach(manager, toy_model(ToyUNet()))
    other = ToyUNet(seed=1)
    swapped = DiffusionModel(unet=other, family="sd1", prediction="eps", key=base.key, compiled=base.compiled)
    args, kwargs = unet_inputs()
    with torch.inference_mode():
        run_unet(swapped, *args, **kwargs)
    assert other.eager_calls == 1 and base.unet.eager_calls == 0
    assert manager.report() == [] and not manager.busy()


def test_ready_buckets_run_eager_while_the_compile_thread_runs_compiled_code(tmp_path, monkeypatch):
    served, inside, release = [], threading.Event(), threading.Event()
    monkeypatch.setattr(torch._dynamo, "run", lambda module: lambda *a, **k: served.append(module) or module(*a, **k))

    def compile(module, **kwargs):
        if getattr(module, "slow", False):
            inside.set()
            release.wait(WAIT)
        return module

    monkeypatch.setattr(torch, "compile", compile)
    manager = CompiledUNets("reduce-overhead", tmp_path, warmup_calls=1)
    first = attach(manager, toy_model(ToyUNet()))
    slow = ToyUNet(seed=1)
    slow.slow = True
    second = attach(manager, toy_model(slow, key=("toy2",)))
    args, kwargs = unet_inputs()
    with torch.inference_mode():
        run_unet(first, *args, **kwargs)
        assert manager.wait_idle(WAIT)
        run_unet(first, *args, **kwargs)
        assert served == [first.unet]
        run_unet(second, *args, **kwargs)
        assert inside.wait(WAIT)  # the compile thread holds the compiled code now
        started = time.perf_counter()
        run_unet(first, *args, **kwargs)
        assert time.perf_counter() - started < 5 and served == [first.unet]  # eager, without waiting
        release.set()
        assert manager.wait_idle(WAIT)
        run_unet(first, *args, **kwargs)
        run_unet(second, *args, **kwargs)
    assert served == [first.unet, first.unet, slow]


# the model cache -----------------------------------------------------------------------------
def unet_call(model):
    """Arguments for a tiny SD1 UNet call, as the sampler makes them."""
    with torch.inference_mode():
        return (torch.randn(2, 4, 8, 8), torch.tensor(999.0).expand(2)), \
            {"encoder_hidden_states": torch.randn(2, 77, 32), "return_dict": False}


def test_models_from_the_cache_carry_their_own_compile_hook(files, tmp_path, fake_compile):
    manager = CompiledUNets("default", tmp_path)
    cache = ModelCache(files, device="cpu", compiler=manager)
    model, clip, _ = cache.checkpoint(files / "a.safetensors")
    assert model.compiled is not None and model.compiled.key == (model.key, ())
    lora = LoraPatch(str(files / "l.safetensors"), 0.8)
    patched, _ = cache.with_loras(model, clip, [lora])
    # The LoRA copy is a dataclasses.replace of the base: it must not use the base's hook.
    assert patched.compiled is not model.compiled and patched.compiled.key == (model.key, (lora,))

    args, kwargs = unet_call(model)
    with torch.inference_mode():
        run_unet(model, *args, **kwargs)
        run_unet(patched, *args, **kwargs)
    assert manager.wait_idle(WAIT)
    assert sorted(r["model"] for r in manager.report()) == ["a.safetensors", "a.safetensors+l.safetensors"]
    assert {r["state"] for r in manager.report()} == {READY}


def test_evicting_a_model_drops_its_compiled_variants(files, tmp_path, fake_compile):
    manager = CompiledUNets("default", tmp_path)
    cache = ModelCache(files, device="cpu", compiler=manager)
    cache.begin_prompt()
    model, _, _ = cache.checkpoint(files / "a.safetensors")
    args, kwargs = unet_call(model)
    with torch.inference_mode():
        run_unet(model, *args, **kwargs)
    assert manager.wait_idle(WAIT)
    assert [r["state"] for r in manager.report()] == [READY]
    one = cache.report()[0]["bytes"]
    cache.end_prompt()

    cache.device_budget = int(one * 1.5)  # room for one checkpoint: loading b evicts a
    cache.begin_prompt()
    other, _, _ = cache.checkpoint(files / "b.safetensors")
    cache.end_prompt()
    assert [r["name"] for r in cache.report()] == ["b.safetensors"]
    assert manager.report() == []

    with torch.inference_mode():
        run_unet(other, *args, **kwargs)
    manager.wait_idle(WAIT)
    assert [r["model"] for r in manager.report()] == ["b.safetensors"]
    cache.clear()
    assert manager.report() == []


def test_a_compile_that_ends_after_its_model_was_evicted_is_discarded(files, tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()

    def slow(module, **kwargs):
        started.set()
        release.wait(WAIT)
        return module

    monkeypatch.setattr(torch, "compile", slow)
    manager = CompiledUNets("default", tmp_path)
    cache = ModelCache(files, device="cpu", compiler=manager)
    model, _, _ = cache.checkpoint(files / "a.safetensors")
    args, kwargs = unet_call(model)
    with torch.inference_mode():
        run_unet(model, *args, **kwargs)
    assert started.wait(WAIT)
    cache.clear()
    release.set()
    assert manager.wait_idle(WAIT)
    assert manager.report() == []


def test_with_compile_off_nothing_is_compiled(files, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled with compile_unet=off"))
    settings = load_settings({"FARM_DATA_DIR": str(tmp_path)})
    assert settings.compile_unet == "off"
    assert from_settings(settings) is None
    cache = ModelCache(files, device="cpu", compiler=from_settings(settings))
    model, _, _ = cache.checkpoint(files / "a.safetensors")
    assert model.compiled is None
    args, kwargs = unet_call(model)
    with torch.inference_mode():
        run_unet(model, *args, **kwargs)


# settings, caches, channels_last -------------------------------------------------------------
def test_settings_compile_unet_and_channels_last(tmp_path):
    base = {"FARM_DATA_DIR": str(tmp_path)}
    settings = load_settings(base)
    assert (settings.compile_unet, settings.channels_last) == ("off", True)
    settings = load_settings(base | {"FARM_COMPILE_UNET": "reduce-overhead", "FARM_CHANNELS_LAST": "0"})
    assert (settings.compile_unet, settings.channels_last) == ("reduce-overhead", False)
    env = settings_environment(settings)
    assert (env["FARM_COMPILE_UNET"], env["FARM_CHANNELS_LAST"]) == ("reduce-overhead", "0")
    assert load_settings(env) == settings
    with pytest.raises(ValueError, match="FARM_COMPILE_UNET"):
        load_settings(base | {"FARM_COMPILE_UNET": "fast"})
    with pytest.raises(ValueError):
        CompiledUNets("off")


def test_compile_caches_live_under_the_data_dir_unless_the_user_chose(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_FX_GRAPH_CACHE", raising=False)
    settings = load_settings({"FARM_DATA_DIR": str(tmp_path), "FARM_COMPILE_UNET": "max-autotune"})
    manager = from_settings(settings)
    assert manager.mode == "max-autotune"
    folder = settings.data_dir / "compile-cache"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder) and folder.is_dir()
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    assert manager.artifacts_path == folder / ARTIFACTS_FILE

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
    assert configure_cache(tmp_path / "other") == tmp_path / "other" / "compile-cache"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "0"


def test_cache_artifacts_are_loaded_before_the_first_compile_and_kept_across_runs(tmp_path, monkeypatch,
                                                                                   fake_compile):
    loaded, saves = [], iter([b"run-2", b"run-2+more"])
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda blob: loaded.append(blob))
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (next(saves), None))
    (tmp_path / ARTIFACTS_FILE).write_bytes(compiled_module._write_blobs([b"run-0", b"run-1"]))
    manager = CompiledUNets("default", tmp_path)
    model = attach(manager, toy_model(ToyUNet()))
    for batch in (1, 2):
        args, kwargs = unet_inputs(batch=batch)
        with torch.inference_mode():
            run_unet(model, *args, **kwargs)
        assert manager.wait_idle(WAIT)
    assert loaded == [b"run-0", b"run-1"]
    # This run's latest blob replaces its earlier one; earlier runs' blobs stay.
    stored = compiled_module._read_blobs((tmp_path / ARTIFACTS_FILE).read_bytes())
    assert stored == [b"run-0", b"run-1", b"run-2+more"]


def test_a_corrupt_artifacts_file_only_costs_compile_time(tmp_path, fake_compile, caplog):
    (tmp_path / ARTIFACTS_FILE).write_bytes(b"garbage")
    manager = CompiledUNets("default", tmp_path)
    model = attach(manager, toy_model(ToyUNet()))
    args, kwargs = unet_inputs()
    with caplog.at_level(logging.WARNING, logger="farm.engine.compiled"), torch.inference_mode():
        run_unet(model, *args, **kwargs)
        assert manager.wait_idle(WAIT)
    assert [r["state"] for r in manager.report()] == [READY]
    assert any("could not load" in r.getMessage() for r in caplog.records)


def test_channels_last_applies_on_cuda_only(files):
    assert wants_channels_last(True, "cuda") and wants_channels_last(True, "cuda:1")
    assert not wants_channels_last(True, "cpu") and not wants_channels_last(False, "cuda")
    assert ModelCache(files, device="cpu", channels_last=True).channels_last is False

    def convs_channels_last(module) -> bool:
        weights = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        return all(w.is_contiguous(memory_format=torch.channels_last) for w in weights if w.shape[-1] > 1)

    plain = ModelCache(files, device="cpu")
    model, _, vae = plain.checkpoint(files / "a.safetensors")
    assert not convs_channels_last(model.unet) and not convs_channels_last(vae.vae)
    # What a CUDA cache does after loading, checked on the CPU: UNet and VAE go channels_last.
    forced = ModelCache(files, device="cpu")
    forced.channels_last = True
    model, _, vae = forced.checkpoint(files / "a.safetensors")
    assert convs_channels_last(model.unet) and convs_channels_last(vae.vae)


def test_a_restarted_worker_compiles_the_remembered_shapes_before_its_first_prompt(tmp_path, fake_compile):
    first_run = CompiledUNets("default", tmp_path)
    unet = ToyUNet()
    model = attach(first_run, toy_model(unet, key=("file", 1)))
    key = (model.key, model.loras)  # the manager's key: the weights and their LoRAs
    args, kwargs = unet_inputs(batch=2)
    with torch.inference_mode():
        run_unet(model, *args, **kwargs)
    assert first_run.wait_idle(WAIT)
    (bucket,) = first_run._models[key].variants
    # A new process on the same data folder: nothing compiled until warm(), which --preload calls.
    restarted = CompiledUNets("default", tmp_path)
    assert restarted.state(key, bucket) is None
    assert restarted.warm(key, unet, timeout=WAIT) == 1
    assert restarted.state(key, bucket) == READY
    assert restarted.get(key, unet, bucket) is not None  # the first prompt is served compiled
    assert restarted.warm((("other", 1), ()), ToyUNet(), timeout=WAIT) == 0  # nothing remembered for it
