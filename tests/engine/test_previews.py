"""Sampling previews: the sampler hands x0 to callbacks that take it; latent2rgb JPEGs per family."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")

from farm.engine.previews import latent_to_rgb, preview_jpeg  # noqa: E402
from farm.engine.sampling import sample  # noqa: E402
from farm.nodes.base import RunContext  # noqa: E402
from farm.nodes.sampling import progress_callback  # noqa: E402
from tests.engine.test_sampling_ksampler import FakeUNet, cond, latent, model_of  # noqa: E402


def test_a_callback_taking_x0_gets_the_denoised_prediction_and_old_callbacks_still_work():
    seen, plain = [], []
    unet = FakeUNet(denoised=lambda x, sigma, ctx: torch.full_like(x, 0.25))
    sample(model_of(unet), 1, 3, 1.0, "euler", "normal", [cond()], [], latent(),
           callback=lambda i, total, x0=None: seen.append((i, total, x0)))
    assert [(i, total) for i, total, _ in seen] == [(0, 3), (1, 3), (2, 3)]
    for _, _, x0 in seen:  # model latent units, as the sampler sees them (off-table sigmas: close)
        torch.testing.assert_close(x0, torch.full((1, 4, 8, 8), 0.25), atol=0.01, rtol=0)
    sample(model_of(unet), 1, 3, 1.0, "euler", "normal", [cond()], [], latent(),
           callback=lambda i, total: plain.append(i))
    assert plain == [0, 1, 2]


def test_latent_to_rgb_is_the_linear_projection_of_the_family():
    zero = torch.zeros(2, 4, 3, 5)
    assert latent_to_rgb(zero, "sd1").shape == (3, 5, 3)
    assert latent_to_rgb(zero, "sd1").unique().tolist() == [128]  # 0 maps to mid grey
    first_channel = torch.zeros(1, 4, 1, 1)
    first_channel[0, 0] = 1.0
    # The published fits: channel 0 of SD1 is (0.3512, 0.2297, 0.3227); SDXL's adds an offset.
    sd1 = [0.3512, 0.2297, 0.3227]
    assert latent_to_rgb(first_channel, "sd1")[0, 0].tolist() == [round((1 + v) * 127.5) for v in sd1]
    assert latent_to_rgb(first_channel, "sd2").tolist() == latent_to_rgb(first_channel, "sd1").tolist()
    sdxl = [0.3651 + 0.1084, 0.4232 - 0.0175, 0.4341 - 0.0011]
    assert latent_to_rgb(first_channel, "sdxl")[0, 0].tolist() == [round((1 + v) * 127.5) for v in sdxl]
    assert latent_to_rgb(zero, "sdxl")[0, 0].tolist() == [round((1 + v) * 127.5) for v in (0.1084, -0.0175, -0.0011)]


def test_preview_jpeg_is_a_jpeg_of_the_latent_size_fitted_within_the_limit():
    from PIL import Image

    image_type, data = preview_jpeg(torch.randn(1, 4, 16, 24), "sd1")
    image = Image.open(io.BytesIO(data))
    assert image_type == "image/jpeg" and image.format == "JPEG" and image.size == (24, 16)
    _, data = preview_jpeg(torch.randn(1, 4, 64, 128), "sdxl", max_size=32)
    assert Image.open(io.BytesIO(data)).size == (32, 16)


def test_the_sampler_callback_offers_a_preview_only_when_previews_are_on():
    reports, offers = [], []
    ctx = RunContext(prompt_id="p", node_id="3", storage=None,
                     report_progress=lambda value, maximum: reports.append((value, maximum)))
    callback = progress_callback(ctx, 10, "sd1")
    callback(0, 10, x0=torch.zeros(1, 4, 8, 8))
    assert reports == [(1, 10)] and offers == []
    ctx.preview = offers.append
    callback(1, 10, x0=torch.zeros(1, 4, 8, 8))
    callback(2, 10)  # no x0: nothing to preview
    assert reports == [(1, 10), (2, 10), (3, 10)] and len(offers) == 1
    image_type, data = offers[0]()
    assert image_type == "image/jpeg" and data[:2] == b"\xff\xd8"
