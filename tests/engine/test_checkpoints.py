"""Checkpoint loading: tiny SD1 / SD2 / SDXL files written in the real layouts load back bit for bit."""

from __future__ import annotations

import os
import pickle
import shutil
import sys

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from farm.engine import architecture, ldm_layout, tokenizer
from farm.engine.checkpoints import CheckpointError, load_checkpoint, load_vae
from tests.engine import tiny_checkpoints as T

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"sd1": T.make_sd1(d / "sd1.safetensors"), "sd2": T.make_sd2(d / "sd2v.safetensors"),
            "sdxl": T.make_sdxl(d / "sdxl.safetensors"),
            "sdxl_refiner": T.make_sdxl_refiner(d / "refiner.safetensors")}


@pytest.fixture(scope="module")
def loaded(files):
    return {name: load_checkpoint(tiny.path) for name, tiny in files.items()}


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


UNET_FIELDS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
               "layers_per_block", "cross_attention_dim", "attention_head_dim", "use_linear_projection",
               "addition_embed_type", "projection_class_embeddings_input_dim", "mid_block_type")
VAE_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels", "down_block_types", "up_block_types")
CLIP_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings", "hidden_act", "projection_dim")


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_family_prediction_and_configs_are_inferred(files, loaded, name):
    tiny, (model, clip, vae) = files[name], loaded[name]
    assert (model.family, model.prediction, clip.family, vae.family) == (tiny.family, tiny.prediction, name, name)
    for field in UNET_FIELDS:
        assert _as_list(model.unet.config[field]) == _as_list(tiny.unet.config[field]), field
    tlpb = tiny.unet.config.transformer_layers_per_block
    assert _as_list(model.unet.config.transformer_layers_per_block) == _as_list(tlpb)
    for field in VAE_FIELDS:
        assert _as_list(vae.vae.config[field]) == _as_list(tiny.vae.config[field]), field
    assert vae.vae.config.scaling_factor == {"sd1": 0.18215, "sd2": 0.18215}.get(name, 0.13025)
    assert sorted(clip.encoders) == sorted(tiny.text_encoders)
    for key, source in tiny.text_encoders.items():
        assert type(clip.encoders[key]) is type(source)
        fields = CLIP_FIELDS if hasattr(source, "text_projection") else CLIP_FIELDS[:-1]
        for field in fields:
            assert getattr(clip.encoders[key].config, field) == getattr(source.config, field), (key, field)


def _unet_inputs(unet):
    gen = torch.Generator().manual_seed(1)
    cfg = unet.config
    kwargs = {"sample": torch.randn(2, 4, 8, 8, generator=gen), "timestep": torch.tensor([10, 700]),
              "encoder_hidden_states": torch.randn(2, 77, cfg.cross_attention_dim, generator=gen)}
    if cfg.addition_embed_type == "text_time":
        # the base model has 6 size/crop numbers, the refiner 5 (the last is an aesthetic score)
        numbers = 6 if cfg.cross_attention_dim == 128 else 5
        pooled = cfg.projection_class_embeddings_input_dim - numbers * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=gen),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64][:numbers]] * 2)}
    return kwargs


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_loaded_modules_are_bit_identical_to_the_source(files, loaded, name):
    tiny, (model, clip, vae) = files[name], loaded[name]
    with torch.no_grad():
        inputs = _unet_inputs(tiny.unet)
        assert torch.equal(model.unet(**inputs).sample, tiny.unet(**inputs).sample)
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        assert torch.equal(vae.vae.decode(z).sample, tiny.vae.decode(z).sample)
        image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
        assert torch.equal(vae.vae.encode(image).latent_dist.mean, tiny.vae.encode(image).latent_dist.mean)
        ids = clip.tokenizer(["a photo of a cat", "(red:1.2) fox"], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        for key, source in tiny.text_encoders.items():
            got, want = clip.encoders[key](ids, output_hidden_states=True), source(ids, output_hidden_states=True)
            assert torch.equal(got.last_hidden_state, want.last_hidden_state)
            assert torch.equal(got.hidden_states[-2], want.hidden_states[-2])
            if hasattr(want, "text_embeds"):
                assert torch.equal(got.text_embeds, want.text_embeds)
    for got, want in [(model.unet, tiny.unet), (vae.vae, tiny.vae)]:
        assert all(torch.equal(got.state_dict()[k], v) for k, v in want.state_dict().items())


def test_keys_identify_file_component_dtype_and_device(files, loaded, tmp_path):
    model, clip, vae = loaded["sd1"]
    st = os.stat(files["sd1"].path)
    base = (os.path.realpath(files["sd1"].path), st.st_size, st.st_mtime_ns)
    assert model.key == base + ("unet", "torch.float32", "cpu")
    assert clip.key == base + ("clip", "torch.float32", "cpu")
    assert vae.key == base + ("vae", "torch.float32", "cpu")
    link = tmp_path / "link.safetensors"
    link.symlink_to(files["sd1"].path)
    assert load_checkpoint(link)[0].key == model.key  # the same file under another name


def test_requested_dtypes_are_honoured(files):
    model, clip, vae = load_checkpoint(files["sdxl"].path, unet_dtype=torch.float16, clip_dtype=torch.float16,
                                       vae_dtype=torch.bfloat16)
    assert {p.dtype for p in model.unet.parameters()} == {torch.float16}
    assert {p.dtype for e in clip.encoders.values() for p in e.parameters()} == {torch.float16}
    assert {p.dtype for p in vae.vae.parameters()} == {torch.bfloat16}
    assert (model.key[4], clip.key[4], vae.key[4]) == ("torch.float16", "torch.float16", "torch.bfloat16")
    assert torch.equal(model.unet.conv_in.weight, files["sdxl"].unet.conv_in.weight.half())


def test_prediction_variants(tmp_path):
    assert load_checkpoint(T.make_sd2(tmp_path / "sd2e.safetensors", prediction="eps").path)[0].prediction == "eps"
    assert load_checkpoint(T.make_sdxl(tmp_path / "xlv.safetensors", v_pred=True).path)[0].prediction == "v"


def test_loaded_weights_do_not_depend_on_the_file_afterwards(files, tmp_path):
    """Tensors are copied out of the mmap: truncating the file must not crash the process (SIGBUS)."""
    path = tmp_path / "copy.safetensors"
    shutil.copy(files["sd1"].path, path)
    model, _, _ = load_checkpoint(path)
    with open(path, "r+b") as f:
        f.truncate(64)
    assert torch.equal(model.unet.conv_out.weight, files["sd1"].unet.conv_out.weight)


def test_pickle_checkpoint_loads_with_weights_only(files, tmp_path):
    path = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": load_file(files["sd1"].path), "global_step": 470000, "epoch": 3}, path)
    model, clip, vae = load_checkpoint(path, clip_dtype=None)
    assert model.family == "sd1"
    # .ckpt carries no metadata, so the 4-head override is lost: CLIP-L is rebuilt with 64-dim heads
    assert clip.encoders["l"].config.num_attention_heads == 1
    assert torch.equal(model.unet.conv_in.weight, files["sd1"].unet.conv_in.weight)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="unsafe pickle") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "posix.system" in str(err.value)
    assert "weights_only` set to `False`" not in str(err.value)  # never advise the unsafe way
    raw = tmp_path / "evil_raw.pt"  # a plain pickle, not torch.save's zip
    with open(raw, "wb") as f:
        pickle.dump({"x": _Exploit(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match="unsafe pickle"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_bad_files_give_clear_errors(files, tmp_path):
    with pytest.raises(CheckpointError, match="model file not found: .*missing.safetensors"):
        load_checkpoint(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(files["sd1"].path, "rb").read()[: 1_000_000])
    with pytest.raises(CheckpointError, match="truncated.safetensors is not a readable safetensors file"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(garbage)
    garbage_ckpt = tmp_path / "garbage.ckpt"
    garbage_ckpt.write_bytes(b"not a pickle at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.ckpt is not a readable checkpoint"):
        load_checkpoint(garbage_ckpt)


def _write(path, keys, metadata=None):
    save_file({k: torch.zeros(2, 2) for k in keys}, str(path), metadata=metadata)
    return path


def test_files_that_are_not_supported_checkpoints(files, tmp_path):
    lora = tmp_path / "lora.safetensors"
    T.make_sd1_lora(lora, files["sd1"])
    with pytest.raises(CheckpointError, match=r"lora.safetensors: not an SD1/SD2/SDXL checkpoint: it looks like a LoRA"):
        load_checkpoint(lora)
    sd3 = _write(tmp_path / "sd3.safetensors", ["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight",
                                                "model.diffusion_model.x_embedder.proj.weight"])
    with pytest.raises(CheckpointError, match=r"detected SD3 / SD3.5 \(MMDiT\), which is not supported"):
        load_checkpoint(sd3)
    flux = _write(tmp_path / "flux.safetensors", ["double_blocks.0.img_attn.norm.key_norm.scale"])
    with pytest.raises(CheckpointError, match="detected Flux"):
        load_checkpoint(flux)
    noise = _write(tmp_path / "noise.safetensors", ["a", "b.weight"])
    with pytest.raises(CheckpointError, match="not a diffusion checkpoint"):
        load_checkpoint(noise)
    vae_only = tmp_path / "vae.safetensors"
    T.make_vae_file(vae_only)
    with pytest.raises(CheckpointError, match="looks like a VAE"):
        load_checkpoint(vae_only)


def test_bad_architecture_metadata_and_incomplete_files(files, tmp_path):
    sd = load_file(files["sd1"].path)
    bad = tmp_path / "bad_meta.safetensors"
    save_file(sd, str(bad), metadata={"farm.arch": "{not json"})
    with pytest.raises(CheckpointError, match="farm.arch.*not valid JSON"):
        load_checkpoint(bad)
    unet_only = tmp_path / "unet_only.safetensors"
    save_file({k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}, str(unet_only))
    model, clip, vae = load_checkpoint(unet_only)
    assert (model.family, clip, vae) == ("sd1", None, None)
    xl = load_file(files["sdxl"].path)
    no_g = tmp_path / "no_g.safetensors"
    save_file({k: v for k, v in xl.items() if not k.startswith("conditioner.embedders.1.")}, str(no_g))
    with pytest.raises(CheckpointError, match="incomplete text encoders for sdxl"):
        load_checkpoint(no_g)


def test_older_file_variants_load(files, tmp_path):
    """CLIP-L keys without `text_model.`, float position_ids (fp16 exports), EMA and training extras."""
    sd = load_file(files["sd1"].path)
    prefix = ldm_layout.SD1_CLIP_PREFIX
    sd = {k.replace(prefix + "text_model.", prefix): v for k, v in sd.items()}
    sd[prefix + "embeddings.position_ids"] = sd[prefix + "embeddings.position_ids"].float()
    sd |= {f"model_ema.diffusion_modelinput_blocks{i}": torch.zeros(1) for i in range(120)}
    sd["first_stage_model.loss.logvar"] = torch.zeros(())
    path = tmp_path / "old.safetensors"
    save_file(sd, str(path), metadata={"farm.arch": '{"clip_l": {"num_attention_heads": 4}}'})
    model, clip, vae = load_checkpoint(path)
    ids = clip.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(clip.encoders["l"](ids).last_hidden_state,
                           files["sd1"].text_encoders["l"](ids).last_hidden_state)
    assert torch.equal(model.unet.conv_in.weight, files["sd1"].unet.conv_in.weight)  # not the EMA copy


@pytest.mark.parametrize("layout", ["ldm", "ldm_prefixed", "diffusers"])
def test_standalone_vae_loads_in_every_layout(tmp_path, layout):
    path = tmp_path / f"sdxl_vae_{layout}.safetensors"
    source = T.make_vae_file(path, seed=5, layout=layout)
    vae = load_vae(path)
    assert vae.family == "sdxl"  # SD1 and SDXL VAEs share shapes: the name decides
    assert vae.key[3:] == ("vae", "torch.float32", "cpu")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vae.vae.decode(z).sample, source.decode(z).sample)


def test_vae_loader_takes_the_vae_of_a_full_checkpoint_and_refuses_other_files(files, tmp_path):
    vae = load_vae(files["sd1"].path)
    assert vae.family == "sd1"
    plain = tmp_path / "model.safetensors"  # an SDXL checkpoint whose name says nothing
    shutil.copy(files["sdxl"].path, plain)
    assert load_vae(plain).family == "sdxl"
    assert torch.equal(vae.vae.decoder.conv_out.weight, files["sd1"].vae.decoder.conv_out.weight)
    with pytest.raises(CheckpointError, match="is not a VAE"):
        load_vae(_write(tmp_path / "x.safetensors", ["lora_unet_a.lora_up.weight", "lora_unet_a.lora_down.weight"]))


def test_tokenizer_matches_comfyui_ids_without_importing_open_clip(loaded):
    tok = tokenizer.clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (tok.vocab_size, len(tok), tok.model_max_length) == (49408, 49408, 77)
    assert loaded["sd1"][1].tokenizer is tok and loaded["sdxl"][1].tokenizer is tok
    assert "open_clip" not in sys.modules


def test_missing_open_clip_names_the_package(monkeypatch):
    monkeypatch.setattr(tokenizer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tokenizer.TokenizerUnavailable, match="pip install --no-deps open-clip-torch==3.3.0"):
        tokenizer.vocab_path()


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_full_size_unet_configs_are_inferred_from_shapes(family):
    """The real SD1.5 / SD2.1 / SDXL UNets, built on the meta device: shapes alone give their configs."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**T.FULL_SIZE_UNETS[family])
    sd = ldm_layout.unet_to_ldm(unet.state_dict())
    config = architecture.infer_unet_config(sd, family)
    for field in UNET_FIELDS:
        assert _as_list(config.get(field)) == _as_list(unet.config[field]), field
    assert _as_list(config["transformer_layers_per_block"]) == _as_list(unet.config.transformer_layers_per_block)


@pytest.mark.gpu
@CUDA
def test_cuda_defaults_are_fp16_unet_and_clip_and_bf16_vae(files):
    model, clip, vae = load_checkpoint(files["sdxl"].path, device="cuda")
    assert model.dtype == torch.float16 and model.device.type == "cuda"
    assert {p.dtype for e in clip.encoders.values() for p in e.parameters()} == {torch.float16}
    assert vae.vae.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    inputs = {k: (v.cuda().half() if torch.is_tensor(v) and v.is_floating_point() else v.cuda() if torch.is_tensor(v)
                  else {a: b.cuda().half() for a, b in v.items()}) for k, v in _unet_inputs(files["sdxl"].unet).items()}
    with torch.no_grad():
        got = model.unet(**inputs).sample.float().cpu()
        want = files["sdxl"].unet(**_unet_inputs(files["sdxl"].unet)).sample
    assert torch.allclose(got, want, atol=5e-2, rtol=5e-2)
