"""LoRA patching: kohya/diffusers key layouts, exact merged deltas, strength 0, an untouched base."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from farm.engine.checkpoints import CheckpointError, load_checkpoint
from farm.engine.loras import apply_loras, read_lora
from farm.engine.types import LoraPatch
from tests.engine import tiny_checkpoints as T


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    tiny = T.make_sd1(d / "sd1.safetensors")
    lora = d / "style.safetensors"
    expected = T.make_sd1_lora(lora, tiny)
    model, clip, _ = load_checkpoint(tiny.path)
    return tiny, model, clip, str(lora), expected


def _outputs(model, clip):
    gen = torch.Generator().manual_seed(7)
    sample, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen)
    ids = clip.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return (model.unet(sample, torch.tensor([500]), encoder_hidden_states=context).sample,
                clip.encoders["l"](ids).last_hidden_state)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_lora_changes_outputs_by_the_exact_merged_delta_and_leaves_the_base_alone(sd1):
    _, model, clip, lora, expected = sd1
    base_unet, base_clip = _outputs(model, clip)
    base_state = _state(model.unet)
    patched, patched_clip = apply_loras(model, clip, [LoraPatch(lora, 0.8)])

    unet_out, clip_out = _outputs(patched, patched_clip)
    assert not torch.allclose(unet_out, base_unet) and not torch.allclose(clip_out, base_clip)
    for param, (up, down, alpha) in expected.items():
        module, base = ((patched_clip.encoders["l"], clip.encoders["l"]) if param.startswith("l:")
                        else (patched.unet, model.unet))
        name = param.removeprefix("l:")
        want = 0.8 * alpha / down.shape[0] * (up.flatten(1) @ down.flatten(1)).reshape(base.get_parameter(name).shape)
        got = module.get_parameter(name) - base.get_parameter(name)
        assert torch.allclose(got, want, atol=1e-6), param
    untouched = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v.weight"
    assert torch.equal(patched.unet.get_parameter(untouched), model.unet.get_parameter(untouched))

    # the base: same outputs and weights as before, so other patch sets can start from it
    again_unet, again_clip = _outputs(model, clip)
    assert torch.equal(again_unet, base_unet) and torch.equal(again_clip, base_clip)
    assert all(torch.equal(v, base_state[k]) for k, v in model.unet.state_dict().items())
    assert (patched.loras, patched_clip.loras) == ((LoraPatch(lora, 0.8),), (LoraPatch(lora, 0.8),))
    assert (patched.key, patched_clip.key, model.loras) == (model.key, clip.key, ())
    assert patched_clip.tokenizer is clip.tokenizer


def test_strength_zero_changes_nothing(sd1):
    _, model, clip, lora, _ = sd1
    base = _outputs(model, clip)
    same_model, same_clip = apply_loras(model, clip, [LoraPatch(lora, 0.0)])
    assert same_model is model and same_clip is clip
    assert all(torch.equal(a, b) for a, b in zip(_outputs(same_model, same_clip), base))


def test_model_and_clip_strengths_are_separate_calls(sd1):
    _, model, clip, lora, _ = sd1
    base_unet, base_clip = _outputs(model, clip)
    patched, none_clip = apply_loras(model, None, [(lora, 1.0)])
    assert none_clip is None and patched.loras == (LoraPatch(lora, 1.0),)
    none_model, patched_clip = apply_loras(None, clip, [LoraPatch(lora, -0.5)])
    assert none_model is None
    unet_out, clip_out = _outputs(patched, patched_clip)
    assert not torch.equal(unet_out, base_unet) and not torch.equal(clip_out, base_clip)
    assert torch.equal(_outputs(patched, clip)[1], base_clip)  # the model call left CLIP alone


def test_stacked_patches_add_up_and_copies_move_independently(sd1):
    _, model, clip, lora, _ = sd1
    once, _ = apply_loras(model, None, [LoraPatch(lora, 1.0)])
    half, _ = apply_loras(model, None, [LoraPatch(lora, 0.5)])
    twice, _ = apply_loras(half, None, [LoraPatch(lora, 0.5)])
    assert twice.loras == (LoraPatch(lora, 0.5), LoraPatch(lora, 0.5))
    for name, p in once.unet.named_parameters():
        assert torch.allclose(twice.unet.get_parameter(name), p, atol=1e-6), name
    # untouched weights share storage with the base, yet converting the copy leaves the base as it was
    assert once.unet.conv_in.weight.data_ptr() == model.unet.conv_in.weight.data_ptr()
    assert once.unet.conv_in.weight is not model.unet.conv_in.weight
    once.unet.to(torch.float64)
    assert model.unet.conv_in.weight.dtype == torch.float32 and model.dtype == torch.float32


def test_read_lora_groups_keys_and_refuses_other_files(sd1, tmp_path):
    tiny, _, _, lora, expected = sd1
    groups = read_lora(lora)
    assert len(groups) == len(expected)
    assert set(groups["lora_unet_down_blocks_1_resnets_0_conv1"]) == {"up", "down", "alpha"}
    with pytest.raises(CheckpointError, match="sd1.safetensors: not a LoRA"):
        read_lora(tiny.path)


def test_unmatched_keys_are_logged_not_fatal(sd1, tmp_path, caplog):
    _, model, clip, _, _ = sd1
    path = tmp_path / "odd.safetensors"
    save_file({"lora_unet_no_such_layer.lora_up.weight": torch.ones(4, 2),
               "lora_unet_no_such_layer.lora_down.weight": torch.ones(2, 4),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(4, 2),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(2, 4)}, str(path))
    with caplog.at_level(logging.WARNING, logger="farm.engine.loras"):
        patched, patched_clip = apply_loras(model, clip, [LoraPatch(str(path), 1.0)])
    assert "2 keys not loaded" in caplog.text
    assert patched.unet is model.unet and patched_clip.encoders["l"] is clip.encoders["l"]


def test_kohya_sdxl_names_reach_the_real_sdxl_unet():
    """SDXL trainers name UNet layers the LDM way; check the table against the full-size UNet (meta)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from farm.engine.loras import unet_table

    with init_empty_weights():
        unet = UNet2DConditionModel(**T.FULL_SIZE_UNETS["sdxl"])
    table = unet_table(unet)
    assert table["input_blocks_4_1_transformer_blocks_0_attn1_to_q"] == \
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert table["middle_block_1_transformer_blocks_9_ff_net_2"] == "mid_block.attentions.0.transformer_blocks.9.ff.net.2"
    assert table["output_blocks_2_2_conv"] == "up_blocks.0.upsamplers.0.conv"
    assert table["output_blocks_8_0_skip_connection"] == "up_blocks.2.resnets.2.conv_shortcut"
    assert table["label_emb_0_0"] == table["add_embedding_linear_1"] == "add_embedding.linear_1"
