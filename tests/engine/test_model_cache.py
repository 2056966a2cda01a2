"""The worker's model cache: loads counted, hits reused, LRU eviction under a budget, pinning."""

from __future__ import annotations

import os


from farm.engine.model_cache import ModelCache
from farm.engine.types import LoraPatch
from tests.engine.tiny_checkpoints import make_sd1


def test_a_checkpoint_is_loaded_once_and_reused(files):
    cache = ModelCache(files, device="cpu")
    first = cache.checkpoint(files / "a.safetensors")
    again = cache.checkpoint(files / "a.safetensors")
    assert cache.loads == 1
    assert all(x is y for x, y in zip(first, again))
    cache.checkpoint(files / "b.safetensors")
    assert cache.loads == 2
    report = cache.report()
    assert [(r["name"], r["component"], r["device"]) for r in report] == [
        ("a.safetensors", "checkpoint", "cpu"), ("b.safetensors", "checkpoint", "cpu")]
    assert all(r["bytes"] > 0 for r in report)


def test_a_changed_file_is_loaded_again(files, tmp_path):
    path = tmp_path / "c.safetensors"
    make_sd1(path, seed=4)
    cache = ModelCache(files, device="cpu")
    cache.checkpoint(path)
    make_sd1(path, seed=5)
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    cache.checkpoint(path)
    assert cache.loads == 2


def test_least_recently_used_models_are_evicted_but_never_those_in_use(files):
    cache = ModelCache(files, device="cpu")
    cache.checkpoint(files / "a.safetensors")
    one = cache.report()[0]["bytes"]
    cache.device_budget = int(one * 1.5)  # room for one checkpoint
    cache.begin_prompt()
    cache.checkpoint(files / "a.safetensors")
    cache.checkpoint(files / "b.safetensors")
    assert len(cache.report()) == 2  # both in use by the running prompt: nothing evicted
    cache.end_prompt()
    assert [r["name"] for r in cache.report()] == ["b.safetensors"]  # a was least recently used
    cache.begin_prompt()
    cache.checkpoint(files / "a.safetensors")
    assert cache.loads == 3  # evicted models are loaded again
    cache.end_prompt()
    assert [r["name"] for r in cache.report()] == ["a.safetensors"]


def test_lora_patched_models_are_cached_by_base_and_patches(files):
    cache = ModelCache(files, device="cpu")
    model, clip, _ = cache.checkpoint(files / "a.safetensors")
    lora = LoraPatch(str(files / "l.safetensors"), 0.8)
    patched = cache.with_loras(model, clip, [lora])
    assert cache.with_loras(model, clip, [lora]) == patched
    assert cache.with_loras(model, clip, [LoraPatch(lora.path, 0.0)]) == (model, clip)
    twice = cache.with_loras(patched[0], patched[1], [lora])
    assert twice[0] is not patched[0]  # LoRA on top of the patched model is its own entry
    assert cache.loads == 1


def test_clear_drops_everything(files):
    cache = ModelCache(files, device="cpu")
    cache.checkpoint(files / "a.safetensors")
    cache.clear()
    assert cache.report() == []
    cache.checkpoint(files / "a.safetensors")
    assert cache.loads == 2


def test_report_never_waits_for_a_load_in_progress(files):
    """A heartbeat or report must not wait on a checkpoint load (tens of seconds on slow storage)."""
    import threading

    cache = ModelCache(files, device="cpu")
    cache.checkpoint(files / "a.safetensors")
    loading, release = threading.Event(), threading.Event()

    def slow_load():
        loading.set()
        release.wait(30)
        return (None,)

    loader = threading.Thread(target=cache._get, args=(("slow",), "slow", slow_load))
    loader.start()
    assert loading.wait(10)
    answered = threading.Event()
    reporter = threading.Thread(target=lambda: (cache.report(), answered.set()))
    reporter.start()
    try:
        assert answered.wait(2), "report() waited for the load"
        (entry,) = cache.report()
        assert entry["file"] == "a.safetensors" and entry["component"] == "checkpoint"
    finally:
        release.set()
        loader.join()
        reporter.join()
