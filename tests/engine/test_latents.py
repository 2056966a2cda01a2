"""LATENT and CONDITIONING operations: sizes, resampling (bislerp included), compositing, batches."""

from __future__ import annotations

import logging
import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from farm.engine import latents  # noqa: E402
from farm.nodes.base import RunContext  # noqa: E402
from farm.nodes.conditioning import ConditioningAverage, ConditioningSetArea  # noqa: E402
from farm.nodes.latent import EmptyLatentImage, LatentFromBatch, LatentUpscale  # noqa: E402

CTX = RunContext(prompt_id="p", node_id="1", storage=None)


def latent(b=1, h=8, w=8, seed=0):
    return {"samples": torch.randn([b, 4, h, w], generator=torch.Generator().manual_seed(seed))}


# --- sizes and resampling ---------------------------------------------------------------------

def test_empty_latent_is_zeros_at_an_eighth_of_the_size():
    [out] = EmptyLatentImage().run(CTX, width=768, height=516, batch_size=3).values
    assert out["samples"].shape == (3, 4, 64, 96)
    assert out["samples"].dtype == torch.float32 and not out["samples"].any()


@pytest.mark.parametrize("width, height, shape", [
    (1024, 1024, (128, 128)),
    (0, 1024, (128, 64)),  # width follows the 2:1 aspect ratio of the 32x64 latent
    (128, 0, (32, 16)),
    (16, 16, (8, 8)),  # never below 64 pixels a side
    (0, 0, (64, 32)),
])
def test_latent_upscale_sizes(width, height, shape):
    samples = latent(h=64, w=32)
    [out] = LatentUpscale().run(CTX, samples=samples, upscale_method="bilinear", width=width, height=height,
                                crop="disabled").values
    assert tuple(out["samples"].shape[-2:]) == shape


def test_latent_upscale_keeps_other_keys_and_crops_the_centre():
    samples = {**latent(h=4, w=8), "batch_index": [3]}
    out = latents.upscale(samples, "nearest-exact", 64, 64, "center")
    assert out["batch_index"] == [3]
    assert torch.equal(out["samples"], F.interpolate(samples["samples"][..., 2:6], size=(8, 8), mode="nearest-exact"))
    assert samples["samples"].shape == (1, 4, 4, 8)  # the input is untouched


def test_latent_upscale_by_rounds_the_size():
    out = latents.upscale_by(latent(h=10, w=7), "area", 1.5)
    assert out["samples"].shape == (1, 4, 15, 10)


def test_bislerp_slerps_between_neighbours():
    # Two orthogonal unit vectors side by side, widened to 4: the half-pixel sample positions are
    # 0 (clamped), 0.25, 0.75 and 1 (clamped).
    samples = torch.zeros([1, 4, 1, 2])
    samples[0, 0, 0, 0] = 1.0
    samples[0, 1, 0, 1] = 1.0
    out = latents.bislerp(samples, 4, 1)
    for column, t in enumerate([0.0, 0.25, 0.75, 1.0]):
        expected = torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2), 0.0, 0.0])
        assert torch.allclose(out[0, :, 0, column], expected, atol=1e-6)


def test_bislerp_keeps_vector_lengths_where_bilinear_shrinks_them():
    samples = F.normalize(latent(h=6, w=5)["samples"], dim=1) * 3.0
    out = latents.resize(samples, 13, 11, "bislerp")
    assert out.shape == (1, 4, 11, 13)
    assert torch.allclose(out.norm(dim=1), torch.full((1, 11, 13), 3.0), atol=1e-4)
    assert latents.resize(samples, 13, 11, "bilinear").norm(dim=1).min() < 2.9


def test_bislerp_of_a_constant_field_and_at_the_same_size():
    constant = torch.ones([2, 4, 3, 3]) * torch.tensor([1.0, -2.0, 0.5, 3.0]).reshape(1, 4, 1, 1)
    assert torch.equal(latents.bislerp(constant, 7, 5), constant[..., :1, :1].expand(2, 4, 5, 7))
    samples = latent(h=5, w=6)["samples"]
    assert torch.allclose(latents.bislerp(samples, 6, 5), samples, atol=1e-5)


# --- compositing, blending, batches -----------------------------------------------------------

def test_composite_pastes_and_clips_at_the_border():
    to = {"samples": torch.zeros([1, 4, 8, 8]), "noise_mask": torch.ones([1, 1, 8, 8])}
    out = latents.composite(to, {"samples": torch.ones([1, 4, 4, 4])}, x=48, y=16)
    expected = torch.zeros([1, 4, 8, 8])
    expected[..., 2:6, 6:8] = 1.0
    assert torch.equal(out["samples"], expected)
    assert "noise_mask" in out and not to["samples"].any()


def test_composite_feathers_only_inner_edges():
    to = {"samples": torch.zeros([1, 4, 8, 8])}
    out = latents.composite(to, {"samples": torch.ones([1, 4, 4, 4])}, x=0, y=16, feather=16)["samples"][0, 0]
    # Rows 2..5 pasted, feathered at top and bottom (0.5, 1, 1, 0.5); columns 0..3, feathered on the
    # right only because the left edge is the destination's border.
    assert torch.allclose(out[2:6, :4], torch.tensor([0.5, 1.0, 1.0, 0.5])[:, None] * torch.tensor([1.0, 1.0, 1.0, 0.5]))
    assert not out[:2].any() and not out[6:].any() and not out[:, 4:].any()


def test_blend_weights_the_first_input_by_the_factor():
    ones, zeros = {"samples": torch.ones([1, 4, 8, 8])}, {"samples": torch.zeros([1, 4, 4, 4])}
    out = latents.blend(ones, zeros, 0.25)
    assert torch.allclose(out["samples"], torch.full([1, 4, 8, 8], 0.25))


def test_repeat_batch_extends_batch_indices_and_per_image_masks():
    samples = {**latent(b=2), "batch_index": [4, 5], "noise_mask": torch.rand([2, 1, 8, 8])}
    out = latents.repeat_batch(samples, 3)
    assert out["samples"].shape[0] == 6 and torch.equal(out["samples"][4:], samples["samples"])
    assert out["batch_index"] == [4, 5, 6, 7, 8, 9]
    assert torch.equal(out["noise_mask"][2:4], samples["noise_mask"])
    single = latents.repeat_batch({**latent(b=1), "noise_mask": torch.ones([1, 1, 8, 8])}, 2)
    assert single["noise_mask"].shape[0] == 1 and "batch_index" not in single


def test_from_batch_clamps_and_remembers_the_original_indices():
    samples = {**latent(b=4), "noise_mask": torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 8, 8)}
    [out] = LatentFromBatch().run(CTX, samples=samples, batch_index=1, length=2).values
    assert torch.equal(out["samples"], samples["samples"][1:3])
    assert out["batch_index"] == [1, 2]
    # Two masks for four images cycle: images 1 and 2 take masks 1 and 0.
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.0]
    last = latents.from_batch({**samples, "batch_index": [10, 11, 12, 13]}, 9, 5)
    assert last["samples"].shape[0] == 1 and last["batch_index"] == [13]


def test_set_noise_mask_shapes_the_mask():
    assert latents.set_noise_mask(latent(), torch.ones([16, 16]))["noise_mask"].shape == (1, 1, 16, 16)
    assert latents.set_noise_mask(latent(b=2), torch.ones([2, 16, 16]))["noise_mask"].shape == (2, 1, 16, 16)


# --- conditioning -----------------------------------------------------------------------------

def cond(tokens, value, pooled=None, dim=8):
    extras = {} if pooled is None else {"pooled_output": torch.full([1, 4], float(pooled))}
    return [torch.full([1, tokens, dim], float(value)), extras]


def test_combine_and_concat(caplog):
    a, b, c = cond(77, 1), cond(154, 2), cond(77, 3)
    assert latents.combine([a], [b, c]) == [a, b, c]
    with caplog.at_level(logging.WARNING):
        out = latents.concat([a, c], [b, c])
    assert [entry[0].shape[1] for entry in out] == [231, 231]
    assert torch.equal(out[0][0][:, 77:], b[0]) and "only the first" in caplog.text


def test_average_cuts_or_pads_the_from_cond_and_averages_pooled_vectors():
    [[longer, extras]] = ConditioningAverage().run(
        CTX, conditioning_to=[cond(77, 1.0, pooled=1.0)], conditioning_from=[cond(154, 3.0, pooled=5.0)],
        conditioning_to_strength=0.25).values[0]
    assert longer.shape == (1, 77, 8) and torch.allclose(longer, torch.full([1, 77, 8], 2.5))
    assert torch.allclose(extras["pooled_output"], torch.full([1, 4], 4.0))
    [[padded, extras]] = latents.average([cond(154, 1.0)], [cond(77, 3.0, pooled=5.0)], 0.5)
    assert torch.allclose(padded[:, :77], torch.full([1, 77, 8], 2.0))
    assert torch.allclose(padded[:, 77:], torch.full([1, 77, 8], 0.5))
    assert torch.equal(extras["pooled_output"], torch.full([1, 4], 5.0))


def test_zero_out_and_set_area():
    original = [cond(77, 1.0, pooled=2.0)]
    [[zeros, extras]] = latents.zero_out(original)
    assert not zeros.any() and not extras["pooled_output"].any() and original[0][1]["pooled_output"].all()
    [[_, area]] = ConditioningSetArea().run(CTX, conditioning=original, width=260, height=128, x=72, y=8,
                                           strength=0.7).values[0]
    assert (area["area"], area["strength"], area["set_area_to_bounds"]) == ((16, 32, 1, 9), 0.7, False)
    assert "area" not in original[0][1]
