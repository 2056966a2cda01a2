"""The seed workflow through the farm's executor on a GPU: cold load, warm s/image, it/s, batch 4, sweep.

Builds random-weight models with the real SD1.5 (and SDXL) architectures, saves them as
single-file checkpoints in ComfyUI's layout, then times the README's seed workflow through the
worker's GraphExecutor with its model and execution caches (the code path of a worker):
- cold: load + first image (the checkpoint load is timed on its own too, as MB/s beside the plain
  read of the same file, from the page cache: the loader's own overhead);
- warm seconds per image (new seed each time, so sampling and decoding really run);
- sampler it/s (from the KSampler's progress events);
- batch 4 seconds per image; peak GPU memory;
- a seed sweep (--sweep prompts) one prompt after the other, then coalesced in groups of --group
  (farm.graph.group, batched on a GPU, exact on the CPU), seconds per image each;
- knobs, as ratios measured in the same run: channels_last (the baseline runs without it), and
  with --compile the worker's own torch.compile mechanism (farm.engine.compiled, mode
  --compile-mode, default reduce-overhead: CUDA graphs): the first image after turning it on runs
  eager while the UNet compiles in the background (compile_first_s should match the eager warm
  time), compile_ready_s is when the compiled UNet was warm, then warm s/image compiled.
Prints one JSON line. Check it on a CPU first: `python bench/gpu_seed.py --tiny`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from farm.engine import ldm_layout as L  # noqa: E402
from farm.engine.compiled import CompiledUNets, configure_cache  # noqa: E402
from farm.engine.model_cache import ModelCache  # noqa: E402
from farm.graph.cache import ExecutionCache  # noqa: E402
from farm.graph.executor import GraphExecutor  # noqa: E402
from farm.graph.validation import validate_prompt  # noqa: E402
from farm.nodes.base import NodeEnvironment  # noqa: E402
from farm.nodes.registry import default_registry  # noqa: E402
from farm.storage import LocalStorage  # noqa: E402

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
                 attention_head_dim=[5, 10, 20], use_linear_projection=True, transformer_layers_per_block=[1, 2, 10],
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
TINY_UNET = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                 attention_head_dim=8, norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
FULL_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4, norm_num_groups=32)


def clip(hidden: int, layers: int, heads: int, open_clip: bool, projection: int | None = None):
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            hidden_act="gelu" if open_clip else "quick_gelu", projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_checkpoint(path: str, family: str, tiny: bool, device: str) -> None:
    """Random weights in the real architecture, written in ComfyUI's single-file layout (fp16 on GPU)."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    with torch.device(device):
        if family == "sd15":
            unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET))
            encoders = {"l": clip(32, 2, 4, False) if tiny else clip(768, 12, 12, False)}
        else:
            unet = UNet2DConditionModel(**SDXL_UNET)
            encoders = {"l": clip(768, 12, 12, False), "g": clip(1280, 32, 20, True, projection=1280)}
        vae = AutoencoderKL(**(TINY_VAE if tiny else FULL_VAE))
    half = lambda module: {k: v.to(dtype).cpu() for k, v in module.state_dict().items()}  # noqa: E731
    state = L.unet_to_ldm(half(unet)) | L.vae_to_ldm(half(vae))
    if family == "sd15":
        state |= L.clip_l_to_ldm(half(encoders["l"]))
    else:
        state |= L.clip_l_to_ldm(half(encoders["l"]), prefix=L.SDXL_CLIP_L_PREFIX)
        state |= L.open_clip_to_ldm(half(encoders["g"]), prefix=L.SDXL_OPENCLIP_PREFIX)
    metadata = {"farm.arch": json.dumps({"clip_l": {"num_attention_heads": 4}})} if tiny else None
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=metadata)


def seed_prompt(seed: int, size: int, steps: int, batch: int = 1) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 8.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "bench.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["8", 0]}},
    }


class Runner:
    def __init__(self, folder: str, device: str):
        storage = LocalStorage({k: os.path.join(folder, k) for k in ("output", "input", "temp")})
        env = NodeEnvironment(storage, os.path.join(folder, "models"))
        registry = default_registry()
        # The baseline runs without channels_last; the knob is measured on its own below.
        self.models = ModelCache(env.models_dir, device=device, channels_last=False)
        self.executor = GraphExecutor(registry, storage, env, models=self.models, cache=ExecutionCache(registry, env))
        self.device = device

    def run(self, prompt: dict) -> dict:
        """Seconds for the prompt, and the sampler's it/s from its progress events."""
        validation = validate_prompt(prompt, self.executor.registry, self.executor.env)
        assert validation.ok, validation.node_errors
        steps = []
        self.sync()
        started = time.perf_counter()
        result = self.executor.execute("bench", validation.prompt, validation.outputs, {},
                                       lambda event, data: steps.append(time.perf_counter()) if event == "progress" else None)
        self.sync()
        elapsed = time.perf_counter() - started
        assert result.status == "success", result.error
        rate = (len(steps) - 1) / (steps[-1] - steps[0]) if len(steps) > 1 and steps[-1] > steps[0] else None
        return {"seconds": elapsed, "it_per_s": rate}

    def run_group(self, prompts: list[dict]) -> float:
        """Seconds for the prompts as one coalesced group: each through the executor in a thread of
        its own, meeting at the sampler (what a worker does, farm.worker.runtime._execute_group)."""
        from concurrent.futures import ThreadPoolExecutor

        from farm.graph.group import CoalescedGroup

        validations = [validate_prompt(prompt, self.executor.registry, self.executor.env) for prompt in prompts]
        group = CoalescedGroup([f"bench-{index}" for index in range(len(prompts))])
        self.sync()
        started = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda item: self.executor.execute(
                f"bench-{item[0]}", item[1].prompt, item[1].outputs, {}, lambda event, data: None, group=group),
                enumerate(validations)))
        self.sync()
        assert all(result.status == "success" for result in results), [r.error for r in results if r.error]
        return time.perf_counter() - started

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def unet(self):
        (entry,) = [e for e in self.models._entries.values()]
        return entry.value[0]


def sweep(runner: Runner, size: int, steps: int, prompts: int, group: int) -> dict:
    """A seed sweep of `prompts` prompts: one after the other, then coalesced in groups of `group`."""
    alone = sum(runner.run(seed_prompt(1000 + seed, size, steps))["seconds"] for seed in range(prompts))
    grouped = sum(runner.run_group([seed_prompt(2000 + start + seed, size, steps) for seed in range(group)])
                  for start in range(0, prompts, group))
    return {"sweep_prompts": prompts, "sweep_group": group, "sweep_alone_s_per_image": round(alone / prompts, 4),
            "sweep_coalesced_s_per_image": round(grouped / prompts, 4),
            "sweep_coalescing_speedup": round(alone / grouped, 3)}


def measure(family: str, tiny: bool, steps: int, warm_runs: int, compile_unet: str | None,
            sweep_prompts: int = 64, sweep_group: int = 4) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = 64 if tiny else (512 if family == "sd15" else 1024)
    folder = tempfile.mkdtemp(prefix="farm-bench-")
    os.makedirs(os.path.join(folder, "models", "checkpoints"))
    started = time.perf_counter()
    build_checkpoint(os.path.join(folder, "models", "checkpoints", "bench.safetensors"), family, tiny, device)
    build_seconds = time.perf_counter() - started
    runner = Runner(folder, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    checkpoint = os.path.join(folder, "models", "checkpoints", "bench.safetensors")
    read_started = time.perf_counter()  # the file's plain read, for the load's MB/s to compare with
    with open(checkpoint, "rb", buffering=0) as handle:
        while handle.read(1 << 24):
            pass
    read_seconds = time.perf_counter() - read_started
    load_started = time.perf_counter()
    runner.models.checkpoint(checkpoint)
    if device == "cuda":
        torch.cuda.synchronize()
    load_seconds = time.perf_counter() - load_started
    megabytes = os.path.getsize(checkpoint) / 1e6
    runner.models.clear()  # the cold run below loads it again, as a first prompt would
    cold = runner.run(seed_prompt(0, size, steps))
    warm = [runner.run(seed_prompt(seed, size, steps)) for seed in range(1, warm_runs + 1)]
    batch = runner.run(seed_prompt(100, size, steps, batch=4))
    result = {
        "family": family, "size": size, "steps": steps, "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
        "build_checkpoint_s": round(build_seconds, 2), "load_s": round(load_seconds, 3),
        "checkpoint_mb": round(megabytes, 1), "load_mb_per_s": round(megabytes / load_seconds, 1),
        "read_mb_per_s": round(megabytes / read_seconds, 1),
        "cold_s": round(cold["seconds"], 3),
        "warm_s_per_image": round(sum(w["seconds"] for w in warm) / len(warm), 4),
        "sampler_it_per_s": round(sum(w["it_per_s"] for w in warm) / len(warm), 2),
        "batch4_s_per_image": round(batch["seconds"] / 4, 4),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    }
    result.update(sweep(runner, size, steps, sweep_prompts, sweep_group))
    model = runner.unet()
    model.unet.to(memory_format=torch.channels_last)
    (vae,) = [part for part in next(iter(runner.models._entries.values())).value if hasattr(part, "vae")]
    vae.vae.to(memory_format=torch.channels_last)
    channels_last = [runner.run(seed_prompt(200 + seed, size, steps)) for seed in range(warm_runs)]
    result["channels_last_s_per_image"] = round(sum(r["seconds"] for r in channels_last) / warm_runs, 4)
    result["channels_last_speedup"] = round(result["warm_s_per_image"] / result["channels_last_s_per_image"], 3)
    if compile_unet:
        # What a worker with FARM_COMPILE_UNET does: the model cache's hook on the model.
        compiler = CompiledUNets(compile_unet, configure_cache(folder))
        runner.models.compiler = compiler
        model.compiled = compiler.handle((model.key, model.loras), model.unet)
        started = time.perf_counter()
        first = runner.run(seed_prompt(300, size, steps))
        compiler.wait_idle()
        result["compile_ready_s"] = round(time.perf_counter() - started, 2)
        result["compile_buckets"] = compiler.report()
        compiled = [runner.run(seed_prompt(301 + seed, size, steps)) for seed in range(warm_runs)]
        result["compile_mode"] = compile_unet
        result["compile_first_s"] = round(first["seconds"], 3)
        result["compiled_s_per_image"] = round(sum(r["seconds"] for r in compiled) / warm_runs, 4)
        result["compiled_it_per_s"] = round(sum(r["it_per_s"] for r in compiled) / warm_runs, 2)
        result["compile_speedup"] = round(result["warm_s_per_image"] / result["compiled_s_per_image"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=("sd15", "sdxl", "both"), default="sd15")
    parser.add_argument("--tiny", action="store_true", help="tiny models at 64x64: the CPU check of this script")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the UNet under torch.compile")
    parser.add_argument("--sweep", type=int, default=64, help="prompts of the seed sweep, alone then coalesced")
    parser.add_argument("--group", type=int, default=4, help="prompts per coalesced group in the sweep")
    parser.add_argument("--compile-mode", default="reduce-overhead",
                        choices=("default", "reduce-overhead", "max-autotune"))
    args = parser.parse_args()
    families = ("sd15", "sdxl") if args.family == "both" else (args.family,)
    if args.tiny and "sdxl" in families:
        sys.exit("--tiny builds only the SD1.5 layout")
    compile_mode = args.compile_mode if args.compile else None
    results = [measure(family, args.tiny, args.steps, args.warm_runs, compile_mode, args.sweep, args.group)
               for family in families]
    print(json.dumps({"seed_workflow": results, "torch": torch.__version__, "python": platform.python_version()}))


if __name__ == "__main__":
    main()
