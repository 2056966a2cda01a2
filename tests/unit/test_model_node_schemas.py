"""Model node families (sampling, loaders, conditioning, latent, vae): ComfyUI 0.3.64's /object_info
entries, no torch in the web, and the glue between the nodes and the engine (with fakes, no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from farm.engine.types import LoraPatch, TextEncoders
from farm.nodes.base import MAX_RESOLUTION, NodeEnvironment, RunContext
from farm.nodes.conditioning import CLIPTextEncode, CLIPTextEncodeSDXL
from farm.nodes.latent import EmptyLatentImage
from farm.nodes.loaders import CheckpointLoaderSimple, CLIPSetLastLayer, LoraLoader, LoraLoaderModelOnly
from farm.nodes.sampling import SAMPLER_NAMES, SCHEDULER_NAMES, KSampler, KSamplerAdvanced
from farm.nodes.vae import VAEDecode, VAEDecodeTiled

CHECKPOINTS = ["sd15.safetensors", "xl/base.safetensors"]


class FakeInventory:
    def files(self, folder):
        return {"checkpoints": CHECKPOINTS, "loras": ["style.safetensors"]}.get(folder, [])


@pytest.fixture
def env():
    return NodeEnvironment(storage=None, models=FakeInventory())


def ordered(value):
    """`value` with every dict turned into its (key, value) list, so comparisons see key order."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return value


def entry(info):
    # Through JSON, as /object_info serves it.
    return ordered(json.loads(json.dumps(info)))


# The 17 samplers, in ComfyUI's order.
SAMPLERS = [
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]

KSAMPLER = {
    "input": {"required": {
        "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
        "seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True,
                         "tooltip": "The random seed used for creating the noise."}],
        "steps": ["INT", {"default": 20, "min": 1, "max": 10000,
                          "tooltip": "The number of steps used in the denoising process."}],
        "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                          "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to the "
                                     "prompt. Higher values result in images more closely matching the prompt "
                                     "however too high values will negatively impact quality."}],
        "sampler_name": [SAMPLERS, {"tooltip": "The algorithm used when sampling, this can affect the quality, "
                                               "speed, and style of the generated output."}],
        "scheduler": [SCHEDULERS, {"tooltip": "The scheduler controls how noise is gradually removed to form "
                                              "the image."}],
        "positive": ["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to include "
                                                 "in the image."}],
        "negative": ["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to exclude "
                                                 "from the image."}],
        "latent_image": ["LATENT", {"tooltip": "The latent image to denoise."}],
        "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "The amount of denoising applied, lower values will maintain the structure "
                                         "of the initial image allowing for image to image sampling."}],
    }},
    "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                 "negative", "latent_image", "denoise"]},
    "output": ["LATENT"],
    "output_is_list": [False],
    "output_name": ["LATENT"],
    "name": "KSampler",
    "display_name": "KSampler",
    "description": "Uses the provided model, positive and negative conditioning to denoise the latent image.",
    "python_module": "nodes",
    "category": "sampling",
    "output_node": False,
    "output_tooltips": ["The denoised latent."],
}

CHECKPOINT_LOADER = {
    "input": {"required": {"ckpt_name": [CHECKPOINTS, {"tooltip": "The name of the checkpoint (model) to load."}]}},
    "input_order": {"required": ["ckpt_name"]},
    "output": ["MODEL", "CLIP", "VAE"],
    "output_is_list": [False, False, False],
    "output_name": ["MODEL", "CLIP", "VAE"],
    "name": "CheckpointLoaderSimple",
    "display_name": "Load Checkpoint",
    "description": "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
    "python_module": "nodes",
    "category": "loaders",
    "output_node": False,
    "output_tooltips": ["The model used for denoising latents.", "The CLIP model used for encoding text prompts.",
                        "The VAE model used for encoding and decoding images to and from latent space."],
}

CLIP_TEXT_ENCODE = {
    "input": {"required": {
        "text": ["STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}],
        "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
    }},
    "input_order": {"required": ["text", "clip"]},
    "output": ["CONDITIONING"],
    "output_is_list": [False],
    "output_name": ["CONDITIONING"],
    "name": "CLIPTextEncode",
    "display_name": "CLIP Text Encode (Prompt)",
    "description": "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                   "diffusion model towards generating specific images.",
    "python_module": "nodes",
    "category": "conditioning",
    "output_node": False,
    "output_tooltips": ["A conditioning containing the embedded text used to guide the diffusion model."],
}

EMPTY_LATENT_IMAGE = {
    "input": {"required": {
        "width": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                          "tooltip": "The width of the latent images in pixels."}],
        "height": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                           "tooltip": "The height of the latent images in pixels."}],
        "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096,
                               "tooltip": "The number of latent images in the batch."}],
    }},
    "input_order": {"required": ["width", "height", "batch_size"]},
    "output": ["LATENT"],
    "output_is_list": [False],
    "output_name": ["LATENT"],
    "name": "EmptyLatentImage",
    "display_name": "Empty Latent Image",
    "description": "Create a new batch of empty latent images to be denoised via sampling.",
    "python_module": "nodes",
    "category": "latent",
    "output_node": False,
    "output_tooltips": ["The empty latent image batch."],
}

VAE_DECODE = {
    "input": {"required": {
        "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
        "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
    }},
    "input_order": {"required": ["samples", "vae"]},
    "output": ["IMAGE"],
    "output_is_list": [False],
    "output_name": ["IMAGE"],
    "name": "VAEDecode",
    "display_name": "VAE Decode",
    "description": "Decodes latent images back into pixel space images.",
    "python_module": "nodes",
    "category": "latent",
    "output_node": False,
    "output_tooltips": ["The decoded image."],
}


@pytest.mark.parametrize("node, expected", [
    (KSampler, KSAMPLER), (CheckpointLoaderSimple, CHECKPOINT_LOADER), (CLIPTextEncode, CLIP_TEXT_ENCODE),
    (EmptyLatentImage, EMPTY_LATENT_IMAGE), (VAEDecode, VAE_DECODE),
])
def test_object_info_entries_are_comfyui_s(env, node, expected):
    assert entry(node.info(env)) == ordered(expected)


def test_comfyui_quirks_that_clients_see(env):
    # LoraLoaderModelOnly inherits LoraLoader's description and both output tooltips.
    lora_only = node_info(LoraLoaderModelOnly, env)
    assert lora_only["display_name"] == "LoraLoaderModelOnly"
    assert lora_only["output"] == ["MODEL"] and len(lora_only["output_tooltips"]) == 2
    assert lora_only["description"] == LoraLoader.DESCRIPTION
    sdxl = node_info(CLIPTextEncodeSDXL, env)
    assert sdxl["input_order"]["required"] == ["clip", "width", "height", "crop_w", "crop_h", "target_width",
                                                "target_height", "text_g", "text_l"]
    assert (sdxl["python_module"], sdxl["category"]) == ("comfy_extras.nodes_clip_sdxl", "advanced/conditioning")
    tiled = node_info(VAEDecodeTiled, env)["input"]["required"]
    assert tiled["tile_size"] == ["INT", {"default": 512, "min": 64, "max": 4096, "step": 32}]
    advanced = node_info(KSamplerAdvanced, env)["input"]["required"]
    assert advanced["add_noise"] == [["enable", "disable"]]
    assert advanced["return_with_leftover_noise"] == [["disable", "enable"]]
    assert node_info(CLIPSetLastLayer, env)["input"]["required"]["stop_at_clip_layer"] == [
        "INT", {"default": -1, "min": -24, "max": -1, "step": 1}]


def node_info(node, env):
    return json.loads(json.dumps(node.info(env)))


def test_model_node_modules_import_no_torch():
    code = (
        "import sys\n"
        "from farm.nodes import conditioning, latent, loaders, sampling, vae\n"
        "from farm.nodes.base import NodeEnvironment\n"
        "env = NodeEnvironment(storage=None, models_dir=None)\n"
        "families = (conditioning, latent, loaders, sampling, vae)\n"
        "infos = [cls.info(env) for family in families for cls in family.NODES]\n"
        "assert {'KSampler', 'CheckpointLoaderSimple', 'VAEEncodeForInpaint'} <= {i['name'] for i in infos}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'transformers', 'diffusers')\n"
        "               or m.startswith('farm.engine'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- glue, with a fake model cache and a fake sampler -----------------------------------------

class FakeModels:
    def __init__(self, models_dir):
        self.models_dir = models_dir
        self.calls = []

    def checkpoint(self, path):
        self.calls.append(("checkpoint", path))
        return "MODEL", "CLIP", "VAE"

    def with_loras(self, model, clip, patches):
        self.calls.append(("with_loras", model, clip, patches))
        return (None if model is None else model + "+lora"), (None if clip is None else clip + "+lora")

    def use(self, *components):
        self.calls.append(("use", *components))


@pytest.fixture
def models(tmp_path):
    (tmp_path / "checkpoints" / "xl").mkdir(parents=True)
    (tmp_path / "checkpoints" / "xl" / "base.safetensors").write_bytes(b"x")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    (tmp_path / "checkpoints" / "escape.safetensors").symlink_to(tmp_path / "secret.safetensors")
    return FakeModels(tmp_path)


@pytest.fixture
def ctx(models):
    context = RunContext(prompt_id="p", node_id="1", storage=None)
    context.models = models
    return context


def test_checkpoint_loader_passes_the_absolute_path(ctx, models, tmp_path):
    values = CheckpointLoaderSimple().run(ctx, ckpt_name="xl/base.safetensors").values
    assert values == ("MODEL", "CLIP", "VAE")
    assert models.calls == [("checkpoint", str(tmp_path / "checkpoints" / "xl" / "base.safetensors"))]


@pytest.mark.parametrize("name", ["../secret.safetensors", "escape.safetensors", "/etc/passwd"])
def test_model_names_outside_their_folder_are_refused(ctx, models, name):
    with pytest.raises(ValueError, match="ckpt_name"):
        CheckpointLoaderSimple().run(ctx, ckpt_name=name)
    assert models.calls == []


def test_a_missing_model_file_names_the_input(ctx):
    with pytest.raises(FileNotFoundError, match="ckpt_name"):
        CheckpointLoaderSimple().run(ctx, ckpt_name="missing.safetensors")


def test_lora_loader_applies_each_strength_to_its_side(ctx, models, tmp_path):
    path = str(tmp_path / "loras" / "style.safetensors")
    values = LoraLoader().run(ctx, model="M", clip="C", lora_name="style.safetensors", strength_model=0.5,
                              strength_clip=-1.0).values
    assert values == ("M+lora", "C+lora")
    assert models.calls == [("with_loras", "M", None, [LoraPatch(path, 0.5)]),
                            ("with_loras", None, "C", [LoraPatch(path, -1.0)])]
    models.calls.clear()
    assert LoraLoader().run(ctx, model="M", clip="C", lora_name="gone.safetensors", strength_model=0,
                            strength_clip=0).values == ("M", "C")
    assert LoraLoaderModelOnly().run(ctx, model="M", lora_name="style.safetensors", strength_model=2.0).values == (
        "M+lora",)
    assert models.calls == [("with_loras", "M", None, [LoraPatch(path, 2.0)])]


def test_clip_set_last_layer_returns_a_copy_and_a_lora_keeps_the_layer(ctx, models):
    clip = TextEncoders(family="sd1", encoders={}, tokenizer=None, key=("k",))
    [skipped] = CLIPSetLastLayer().run(None, clip=clip, stop_at_clip_layer=-2).values
    assert (skipped.layer, clip.layer, skipped.key) == (-2, None, ("k",))
    # A patched CLIP cached from an unskipped input still gets this input's layer.
    models.with_loras = lambda model, clip, patches: (model, TextEncoders("sd1", {}, None, ("k", "lora")))
    [_, patched] = LoraLoader().run(ctx, model=None, clip=skipped, lora_name="style.safetensors",
                                    strength_model=1.0, strength_clip=1.0).values
    assert (patched.key, patched.layer) == (("k", "lora"), -2)


@pytest.fixture
def fake_sampler(monkeypatch):
    calls = []

    def sample(*args, **kwargs):
        calls.append((args, kwargs))
        kwargs["callback"](0, 7)
        kwargs["callback"](6, 7)
        return {"samples": "sampled"}

    package = types.ModuleType("farm.engine.sampling")
    package.ksampler = types.SimpleNamespace(sample=sample)
    monkeypatch.setitem(sys.modules, "farm.engine.sampling", package)
    return calls


def test_ksampler_reports_progress_and_checks_interrupts(ctx, models, fake_sampler):
    progress, checks = [], []
    ctx.report_progress = lambda value, maximum: progress.append((value, maximum))
    ctx.check_interrupt = lambda: checks.append(True)
    [latent] = KSampler().run(ctx, model="M", seed=3, steps=20, cfg=7.5, sampler_name="euler", scheduler="karras",
                              positive="P", negative="N", latent_image={"samples": 0}, denoise=0.6).values
    assert latent == {"samples": "sampled"}
    [(args, kwargs)] = fake_sampler
    assert args == ("M", 3, 20, 7.5, "euler", "karras", "P", "N", {"samples": 0})
    assert kwargs["denoise"] == 0.6
    assert progress == [(1, 7), (7, 7)] and len(checks) == 2
    assert models.calls == [("use", "M")]


@pytest.mark.parametrize("add_noise, leftover, disable_noise, force_full_denoise", [
    ("enable", "disable", False, True), ("disable", "enable", True, False),
])
def test_ksampler_advanced_maps_its_switches(ctx, fake_sampler, add_noise, leftover, disable_noise,
                                             force_full_denoise):
    KSamplerAdvanced().run(ctx, model="M", add_noise=add_noise, noise_seed=1, steps=30, cfg=5.0, sampler_name="lms",
                           scheduler="normal", positive="P", negative="N", latent_image={}, start_at_step=10,
                           end_at_step=25, return_with_leftover_noise=leftover)
    [(_, kwargs)] = fake_sampler
    assert (kwargs["disable_noise"], kwargs["force_full_denoise"]) == (disable_noise, force_full_denoise)
    assert (kwargs["start_step"], kwargs["last_step"], kwargs["denoise"]) == (10, 25, 1.0)


def test_the_schema_offers_exactly_the_samplers_and_schedulers_the_engine_implements():
    pytest.importorskip("torch")
    from farm.engine import sampling

    assert list(SAMPLER_NAMES) == SAMPLERS and list(SCHEDULER_NAMES) == SCHEDULERS
    assert tuple(sampling.SAMPLER_NAMES) == SAMPLER_NAMES
    assert tuple(sampling.SCHEDULER_NAMES) == SCHEDULER_NAMES
