"""KSampler end to end: noise, latent scaling, CFG batching, conds, inpainting, callbacks, real UNets."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchsde")

from farm.engine.sampling import sample  # noqa: E402
from farm.engine.sampling.cfg import CFGDenoiser, prepare_conds  # noqa: E402
from farm.engine.sampling.model_sampling import discrete_schedule  # noqa: E402
from farm.engine.sampling.schedulers import ksampler_sigmas  # noqa: E402
from farm.engine.types import DiffusionModel  # noqa: E402
from farm.nodes.base import Interrupted  # noqa: E402

TABLE = discrete_schedule().sigmas
SCALE = 0.18215


class FakeUNet(torch.nn.Module):
    """Records every call; its prediction makes x0 equal `denoised(x, sigma, context)` at table sigmas."""

    def __init__(self, prediction="eps", denoised=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.prediction = prediction
        self.denoised = denoised or (lambda x, sigma, ctx: x)
        self.calls = []

    def forward(self, x_in, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=True):
        self.calls.append({"batch": x_in.shape[0], "t": t.clone(), "x": x_in.clone(),
                           "context": encoder_hidden_states.clone(),
                           "added": added_cond_kwargs, "shape": tuple(x_in.shape)})
        sigma = TABLE[t.long()].view(-1, 1, 1, 1)
        x = x_in * (sigma**2 + 1) ** 0.5
        d = self.denoised(x, sigma, encoder_hidden_states)
        if self.prediction == "eps":
            out = (x - d) / sigma
        else:
            out = (x / (sigma**2 + 1) - d) * (sigma**2 + 1) ** 0.5 / sigma
        return (out,)


def model_of(unet, family="sd1", prediction="eps"):
    return DiffusionModel(unet=unet, family=family, prediction=prediction, key=("test",))


def cond(value=0.0, length=77, dim=32, **extras):
    return [torch.full([1, length, dim], float(value)), extras]


def context_value(x, sigma, ctx):
    """An x0 prediction that tells conds apart: the mean of their context."""
    return ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1).expand_as(x)


def latent(batch=1, h=8, w=8, value=0.0):
    return {"samples": torch.full([batch, 4, h, w], float(value))}


def test_cfg_1_runs_one_batch_of_positives_only():
    unet = FakeUNet()
    sample(model_of(unet), 1, 4, 1.0, "euler", "normal", [cond(1)], [cond(-1)], latent(batch=2))
    assert [c["batch"] for c in unet.calls] == [2, 2, 2, 2]
    assert all(torch.all(c["context"] == 1) for c in unet.calls)


def test_cond_and_uncond_share_one_unet_batch_uncond_first():
    unet = FakeUNet()
    sample(model_of(unet), 1, 3, 7.5, "euler", "normal", [cond(1)], [cond(-1)], latent(batch=2))
    assert [c["batch"] for c in unet.calls] == [4, 4, 4]
    context = unet.calls[0]["context"]
    assert torch.all(context[:2] == -1) and torch.all(context[2:] == 1)
    # Integer timesteps, float dtype: 999 first for "normal".
    assert unet.calls[0]["t"].tolist() == [999.0] * 4
    assert all(torch.equal(c["t"], c["t"].round()) for c in unet.calls)


def test_contexts_of_different_lengths_are_repeated_to_their_lcm():
    unet = FakeUNet()
    positive = [torch.randn(1, 154, 32), {}]
    negative = [torch.randn(1, 77, 32), {}]
    sample(model_of(unet), 1, 2, 5.0, "euler", "normal", [positive], [negative], latent())
    context = unet.calls[0]["context"]
    assert context.shape == (2, 154, 32)
    assert torch.equal(context[0, :77], negative[0][0]) and torch.equal(context[0, 77:], negative[0][0])
    assert torch.equal(context[1], positive[0][0])


def test_contexts_too_different_in_length_run_separately():
    unet = FakeUNet()
    sample(model_of(unet), 1, 2, 5.0, "euler", "normal", [cond(1, length=77 * 5)], [cond(-1)], latent())
    assert [c["batch"] for c in unet.calls] == [1, 1, 1, 1]


def denoise_once(positive, negative, cfg, shape=(1, 4, 16, 16), sigma_index=500):
    model = model_of(FakeUNet(denoised=context_value))
    schedule = discrete_schedule()
    denoiser = CFGDenoiser(model, prepare_conds(positive, model, "positive", shape, schedule),
                           prepare_conds(negative, model, "negative", shape, schedule), cfg, schedule)
    return denoiser(torch.zeros(shape), TABLE[sigma_index])


def test_cfg_is_applied_to_the_denoised_predictions():
    out = denoise_once([cond(2.0)], [cond(0.5)], 3.0)
    torch.testing.assert_close(out, torch.full_like(out, 0.5 + (2.0 - 0.5) * 3.0))


def test_conds_on_one_side_are_averaged_by_strength():
    out = denoise_once([cond(1.0), cond(5.0, strength=3.0)], [], 1.0)
    torch.testing.assert_close(out, torch.full_like(out, (1.0 + 3 * 5.0) / 4))


def test_area_conds_blend_in_with_a_feathered_edge():
    out = denoise_once([cond(1.0), cond(9.0, area=(8, 8, 0, 0))], [], 1.0)
    ramp = torch.arange(8, 0, -1) / 8  # rows/cols 0..7 of the area fade towards its inner edges
    weight = ramp[:, None] * ramp[None, :]
    torch.testing.assert_close(out[0, 0, :8, :8], (1.0 + 9.0 * weight) / (1 + weight))
    torch.testing.assert_close(out[0, :, 8:, :], torch.ones(4, 8, 16))
    torch.testing.assert_close(out[0, :, :, 8:], torch.ones(4, 16, 8))


def test_mask_conds_are_resized_and_weighted():
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0  # left half, in image pixels
    out = denoise_once([cond(1.0), cond(7.0, mask=mask, mask_strength=0.5)], [], 1.0)
    torch.testing.assert_close(out[..., :8], torch.full([1, 4, 16, 8], (1.0 + 0.5 * 7.0) / 1.5))
    torch.testing.assert_close(out[..., 8:], torch.ones(1, 4, 16, 8))


def test_timestep_ranges_switch_conds_on_and_off():
    late = [cond(1.0), cond(7.0, start_percent=0.5, end_percent=1.0)]
    torch.testing.assert_close(denoise_once(late, [], 1.0, sigma_index=999), torch.ones([1, 4, 16, 16]))
    torch.testing.assert_close(denoise_once(late, [], 1.0, sigma_index=100), torch.full([1, 4, 16, 16], 4.0))


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "lcm", "uni_pc"])
def test_an_oracle_unet_is_sampled_to_its_target_in_raw_latent_units(prediction, sampler):
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    unet = FakeUNet(prediction, denoised=lambda x, sigma, ctx: target * SCALE)
    # "simple" sigmas are table entries, so the oracle is exact at every step.
    out = sample(model_of(unet, prediction=prediction), 3, 6, 4.0, sampler, "simple", [cond(1)], [cond(0)],
                 latent())
    assert out["samples"].dtype == torch.float32 and out["samples"].device.type == "cpu"
    # UniPC ends at sigma 0.001: 0.001 * unit noise, over the 0.18215 scale.
    atol = 0.03 if sampler == "uni_pc" else 1e-4
    torch.testing.assert_close(out["samples"], target, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["euler", "dpm_fast", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "uni_pc",
                                     "lms", "heun", "dpm_2_ancestral"])
def test_a_single_step_runs(sampler):
    target = torch.full([1, 4, 8, 8], 0.5)
    unet = FakeUNet(denoised=lambda x, sigma, ctx: target * SCALE)
    out = sample(model_of(unet), 3, 1, 2.0, sampler, "simple", [cond(1)], [cond(0)], latent())
    assert torch.isfinite(out["samples"]).all() and len(unet.calls) >= 1


def test_initial_noise_is_seeded_scaled_and_added_to_the_scaled_latent():
    source = latent(value=0.25)
    out = sample(model_of(FakeUNet()), 42, 3, 1.0, "euler", "karras", [cond()], [], source)
    # The identity UNet (x0 = x) leaves the first state alone: max-denoise noise on the latent.
    torch.manual_seed(42)
    noise = torch.randn(1, 4, 8, 8)
    expected = (noise * math.sqrt(1 + float(TABLE[-1]) ** 2) + 0.25 * SCALE) / SCALE
    torch.testing.assert_close(out["samples"], expected, rtol=1e-5, atol=1e-4)
    # Without max-denoise (denoise < 1) the noise is scaled by sigma_0 only.
    partial = sample(model_of(FakeUNet()), 42, 3, 1.0, "euler", "karras", [cond()], [], source, denoise=0.5)
    sigma0 = float(ksampler_sigmas("euler", "karras", 3, 0.5)[0])
    torch.testing.assert_close(partial["samples"], (noise * sigma0 + 0.25 * SCALE) / SCALE, rtol=1e-5, atol=1e-4)
    quiet = sample(model_of(FakeUNet()), 42, 3, 1.0, "euler", "karras", [cond()], [], source, disable_noise=True)
    torch.testing.assert_close(quiet["samples"], source["samples"])


def test_nothing_to_run_returns_the_latent_unchanged_with_its_keys():
    unet = FakeUNet()
    source = {"samples": torch.randn(2, 4, 8, 8), "batch_index": [3, 4]}
    for kwargs in ({"denoise": 0.0}, {"start_step": 5}, {"start_step": 2, "last_step": 2}):
        out = sample(model_of(unet), 1, 5, 8.0, "euler", "normal", [cond()], [cond()], source, **kwargs)
        assert out is not source and out["batch_index"] == [3, 4]
        assert torch.equal(out["samples"], source["samples"])
    assert unet.calls == []


def test_advanced_steps_window_and_force_full_denoise():
    unet = FakeUNet()
    seen = []
    sample(model_of(unet), 1, 10, 1.0, "euler", "normal", [cond()], [], latent(), start_step=2, last_step=6,
           force_full_denoise=True, callback=lambda i, total: seen.append((i, total)))
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    sigmas = ksampler_sigmas("euler", "normal", 10)
    expected_t = [float(discrete_schedule().timestep(s)) for s in sigmas[2:6]]
    assert [float(c["t"][0]) for c in unet.calls] == expected_t


def test_empty_latents_get_the_models_channel_count_and_batch_index_is_kept():
    source = {"samples": torch.zeros(1, 16, 8, 8), "batch_index": [1]}
    out = sample(model_of(FakeUNet()), 1, 2, 1.0, "euler", "normal", [cond()], [], source)
    assert out["samples"].shape == (1, 4, 8, 8) and out["batch_index"] == [1]
    # batch_index picks the second single-image draw of the seed.
    torch.manual_seed(1)
    torch.randn(1, 4, 8, 8)
    second = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(out["samples"], second * math.sqrt(1 + float(TABLE[-1]) ** 2) / SCALE)


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m_sde"])
def test_noise_mask_keeps_the_unmasked_region(sampler):
    source = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32] = 1.0  # repaint the left half (pixel-size mask, resized to the latent)
    unet = FakeUNet(denoised=lambda x, sigma, ctx: target * SCALE)
    out = sample(model_of(unet), 9, 6, 1.0, sampler, "simple", [cond()], [],
                 {"samples": source, "noise_mask": mask})
    assert "noise_mask" in out
    torch.testing.assert_close(out["samples"][..., :4], target[..., :4], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["samples"][..., 4:], source[..., 4:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler, noise_seed", [("euler", 9), ("ddim", 10)])
def test_inpaint_renoising_uses_the_initial_noise_except_for_ddim(sampler, noise_seed):
    source = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    unet = FakeUNet()
    sample(model_of(unet), 9, 3, 1.0, sampler, "normal", [cond()], [],
           {"samples": source, "noise_mask": torch.zeros(1, 1, 8, 8)})
    sigma = ksampler_sigmas(sampler, "normal", 3)[1]
    seen = unet.calls[1]["x"] * (sigma**2 + 1) ** 0.5  # the UNet input at the second step, back in VE units
    torch.manual_seed(noise_seed)
    expected = source * SCALE + torch.randn(1, 4, 8, 8) * sigma
    torch.testing.assert_close(seen, expected, atol=1e-4, rtol=1e-4)


def test_callback_runs_per_step_and_an_interrupt_propagates():
    seen = []
    sample(model_of(FakeUNet()), 1, 5, 1.0, "dpm_2", "karras", [cond()], [], latent(),
           callback=lambda i, total: seen.append((i, total)))
    assert seen == [(i, 5) for i in range(5)]

    unet = FakeUNet()

    def interrupt(i, total):
        if i == 1:
            raise Interrupted()

    with pytest.raises(Interrupted):
        sample(model_of(unet), 1, 10, 1.0, "euler", "normal", [cond()], [], latent(), callback=interrupt)
    assert len(unet.calls) == 2


def test_output_can_be_edited_in_place():
    out = sample(model_of(FakeUNet()), 1, 2, 1.0, "euler", "normal", [cond()], [], latent())
    out["samples"][0, 0, 0, 0] = 1.0  # would raise for an inference-mode tensor


def test_sdxl_time_ids_default_to_the_latent_size():
    unet = FakeUNet()
    pooled = torch.randn(1, 1280)
    explicit = {"pooled_output": pooled, "width": 1024, "height": 768, "crop_w": 8, "crop_h": 16,
                "target_width": 512, "target_height": 640}
    sample(model_of(unet, family="sdxl"), 1, 1, 5.0, "euler", "normal", [cond(1, dim=2048, **explicit)],
           [cond(0, dim=2048, pooled_output=pooled)], latent(h=12, w=10))
    added = unet.calls[0]["added"]
    assert added["time_ids"].tolist() == [[96, 80, 0, 0, 96, 80], [768, 1024, 16, 8, 640, 512]]
    assert torch.equal(added["text_embeds"], torch.cat([pooled, pooled]))


def test_sdxl_refiner_time_ids_carry_the_aesthetic_score():
    unet = FakeUNet()
    pooled = {"pooled_output": torch.zeros(1, 1280)}
    sample(model_of(unet, family="sdxl_refiner"), 1, 1, 5.0, "euler", "normal", [cond(1, dim=1280, **pooled)],
           [cond(0, dim=1280, **pooled)], latent(h=16, w=16))
    assert unet.calls[0]["added"]["time_ids"].tolist() == [[128, 128, 0, 0, 2.5], [128, 128, 0, 0, 6.0]]


def tiny_unet(**extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        **extra).eval()


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_tiny_diffusers_unet_samples(prediction):
    model = model_of(tiny_unet(), prediction=prediction)
    args = (model, 7, 3, 6.0, "euler", "karras", [cond(0.1)], [cond(-0.1, length=154)], latent(batch=2))
    out = sample(*args)
    assert out["samples"].shape == (2, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    assert torch.equal(sample(*args)["samples"], out["samples"])


def test_a_tiny_sdxl_style_unet_samples():
    unet = tiny_unet(addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=16 + 6 * 8)
    model = model_of(unet, family="sdxl")
    positive = [cond(0.1, pooled_output=torch.randn(1, 16))]
    negative = [cond(0.0, pooled_output=torch.zeros(1, 16))]
    out = sample(model, 7, 3, 6.0, "euler", "karras", positive, negative, latent())
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()
