"""VAE decode/encode with a tiny AutoencoderKL: shapes, ranges, batching, tiles, OOM fallback, inpaint."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from farm.engine import vae as engine  # noqa: E402
from farm.engine.types import Autoencoder  # noqa: E402
from farm.nodes.base import RunContext  # noqa: E402
from farm.nodes.vae import VAEDecode, VAEEncodeForInpaint  # noqa: E402

CTX = RunContext(prompt_id="p", node_id="1", storage=None)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = AutoencoderKL(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                          norm_num_groups=32).eval().requires_grad_(False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape) * 0.02)
    return Autoencoder(vae=model, family="sd1", key=("tiny-vae",))


def randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def reference_decode(vae, latent):
    with torch.no_grad():
        decoded = vae.vae.decode(latent).sample
    return ((decoded + 1) / 2).clamp(0, 1).movedim(1, -1)


def reference_encode(vae, image):
    with torch.no_grad():
        return vae.vae.encode(image.movedim(-1, 1) * 2 - 1).latent_dist.mean


def test_decode_gives_channels_last_images_in_range(vae):
    latent = randn(2, 4, 8, 8)
    [image] = VAEDecode().run(CTX, samples={"samples": latent}, vae=vae).values
    assert image.shape == (2, 64, 64, 3) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.allclose(image, reference_decode(vae, latent), atol=1e-6)


def test_decode_splits_the_batch_when_memory_is_short(vae, monkeypatch):
    latent = randn(3, 4, 8, 8)
    whole = engine.decode(vae, latent)
    calls = []
    decode = vae.vae.decode
    monkeypatch.setattr(engine, "_free_memory", lambda device: 1)
    monkeypatch.setattr(vae.vae, "decode", lambda z: calls.append(z.shape[0]) or decode(z))
    assert torch.allclose(engine.decode(vae, latent), whole, atol=1e-5)
    assert calls == [1, 1, 1]


def test_decode_falls_back_to_tiles_when_out_of_memory(vae, monkeypatch):
    latent = randn(1, 4, 8, 8)
    decode = vae.vae.decode
    calls = []

    def once_out_of_memory(z):
        calls.append(tuple(z.shape))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return decode(z)

    monkeypatch.setattr(vae.vae, "decode", once_out_of_memory)
    image = engine.decode(vae, latent)
    # The fallback's 64-latent tiles cover this latent whole, three times.
    assert calls == [(1, 4, 8, 8)] * 4
    assert torch.allclose(image, reference_decode(vae, latent), atol=1e-5)


def test_tiled_decode_matches_the_plain_decode(vae):
    latent = randn(1, 4, 16, 16, seed=1)
    plain = engine.decode(vae, latent)
    # Tiles twice the image in every pass shape decode it whole.
    assert torch.allclose(engine.decode_tiled(vae, latent, tile_size=512, overlap=64), plain, atol=1e-5)
    # Real tiles: each tile has its own GroupNorm statistics, so the image changes, but the blended
    # seams keep it far closer to the plain decode than the decode of another latent is.
    tiled = engine.decode_tiled(vae, latent, tile_size=128, overlap=32)
    assert tiled.shape == plain.shape and 0.0 <= tiled.min() and tiled.max() <= 1.0
    other = engine.decode(vae, randn(1, 4, 16, 16, seed=5))
    assert (tiled - plain).abs().mean() < 0.25 * (other - plain).abs().mean()
    # An overlap of a quarter tile or more is cut to a quarter.
    assert torch.equal(engine.decode_tiled(vae, latent, tile_size=128, overlap=64), tiled)


def test_tile_blending_reproduces_a_pointwise_function_exactly():
    samples = randn(2, 4, 21, 30)
    upsample = lambda x: F.interpolate(x, scale_factor=8, mode="nearest") * 2 - 1  # noqa: E731
    tiled = engine.tiled_scale(samples, upsample, tile_x=8, tile_y=12, overlap=3, scale=8, out_channels=4)
    assert torch.allclose(tiled, upsample(samples), atol=1e-5)
    pixels = randn(1, 3, 96, 64)
    downsample = lambda x: F.avg_pool2d(x, 8)  # noqa: E731
    tiled = engine.tiled_scale(pixels, downsample, tile_x=32, tile_y=32, overlap=16, scale=1 / 8, out_channels=3)
    assert torch.allclose(tiled, downsample(pixels), atol=1e-5)


def test_encode_returns_the_mean_and_crops_to_multiples_of_eight(vae):
    image = torch.rand([1, 70, 67, 3], generator=torch.Generator().manual_seed(2))
    latent = engine.encode(vae, image)
    assert latent.shape == (1, 4, 8, 8)
    # 70 % 8 = 6 and 67 % 8 = 3: the crop starts 3 rows and 1 column in.
    assert torch.allclose(latent, reference_encode(vae, image[:, 3:67, 1:65]), atol=1e-5)
    assert engine.decode(vae, latent).shape == (1, 64, 64, 3)
    # Whole-image tiles give the plain encoding.
    assert torch.allclose(engine.encode_tiled(vae, image, tile_size=512, overlap=64), latent, atol=1e-5)


def test_encode_ignores_an_alpha_channel(vae):
    image = torch.rand([1, 64, 64, 4], generator=torch.Generator().manual_seed(3))
    assert torch.allclose(engine.encode(vae, image), reference_encode(vae, image[..., :3]), atol=1e-5)


def test_inpaint_encode_greys_the_masked_pixels_and_grows_the_noise_mask(vae):
    image = torch.rand([1, 64, 64, 3], generator=torch.Generator().manual_seed(4))
    mask = torch.zeros([1, 64, 64])
    mask[0, 20, 30] = 1.0
    [out] = VAEEncodeForInpaint().run(CTX, pixels=image, vae=vae, mask=mask, grow_mask_by=6).values
    greyed = image.clone()
    greyed[0, 20, 30] = 0.5
    assert torch.allclose(out["samples"], reference_encode(vae, greyed), atol=1e-5)
    noise_mask = out["noise_mask"]
    assert noise_mask.shape == (1, 1, 64, 64)
    # A 6-pixel window placed as ComfyUI places it: 2 before to 3 after the masked pixel.
    expected = torch.zeros([1, 1, 64, 64])
    expected[..., 18:24, 28:34] = 1.0
    assert torch.equal(noise_mask, expected)


def test_inpaint_mask_is_resized_to_the_image_and_not_grown_at_zero(vae):
    image = torch.rand([1, 64, 64, 3])
    mask = torch.zeros([1, 32, 32])
    mask[0, 8:16, 8:16] = 1.0
    out = engine.encode_for_inpaint(vae, image, mask, grow_mask_by=0)
    expected = F.interpolate(mask[:, None], size=(64, 64), mode="bilinear").round()
    assert torch.equal(out["noise_mask"], expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_bf16_vae_on_cuda_decodes_and_encodes_close_to_float32(vae):
    latent = randn(2, 4, 16, 16)
    image = torch.rand([1, 64, 64, 3], generator=torch.Generator().manual_seed(5))
    want_image, want_latent = engine.decode(vae, latent), engine.encode(vae, image)
    cuda = Autoencoder(vae=AutoencoderKL.from_config(vae.vae.config), family="sd1", key=("tiny-vae", "cuda"))
    cuda.vae.load_state_dict(vae.vae.state_dict())
    cuda.vae.to("cuda", torch.bfloat16).eval()
    got_image, got_latent = engine.decode(cuda, latent), engine.encode(cuda, image)
    assert got_image.device.type == "cpu" and got_image.dtype == torch.float32
    assert (got_image - want_image).abs().mean() < 1e-2
    assert (got_latent - want_latent).abs().mean() < 5e-2
    tiled = engine.decode_tiled(cuda, latent, tile_size=64, overlap=32)
    assert tiled.shape == want_image.shape
