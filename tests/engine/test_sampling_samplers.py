"""Every sampler against toy denoisers whose answers are known in closed form, and the noise sources."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchsde")

from farm.engine.sampling.noise import BrownianTreeNoiseSampler, default_noise_sampler, prepare_noise  # noqa: E402
from farm.engine.sampling.samplers import SAMPLER_NAMES, SAMPLERS, SamplerContext  # noqa: E402
from farm.engine.sampling.schedulers import ksampler_sigmas  # noqa: E402

STOCHASTIC = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
              "dpmpp_3m_sde", "ddpm", "lcm")
DETERMINISTIC = tuple(name for name in SAMPLER_NAMES if name not in STOCHASTIC)
MU, S = 0.5, 1.0  # toy data distribution: every element ~ N(MU, S^2)


def gaussian_denoiser(x, sigma):
    """The exact x0 predictor (posterior mean) for N(MU, S^2) data."""
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def ode_solution(x_start, sigma_start, sigma_end=0.0):
    """Where the probability-flow ODE takes x_start for Gaussian data: x - MU scales with sqrt(S^2 + sigma^2)."""
    return MU + (x_start - MU) * ((S**2 + sigma_end**2) / (S**2 + sigma_start**2)) ** 0.5


def run(name, denoiser, x, sigmas, seed=0, steps=None):
    ctx = SamplerContext(seed=seed, step=(steps.append if steps is not None else (lambda i: None)))
    return SAMPLERS[name](denoiser, x, sigmas, ctx)


def start(sigmas, seed=0, shape=(1, 4, 8, 8)):
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return MU + noise * (S**2 + sigmas[0] ** 2) ** 0.5


@pytest.mark.parametrize("scheduler", ["karras", "normal", "simple", "beta"])
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_gives_finite_output_of_the_right_shape(name, scheduler):
    sigmas = ksampler_sigmas(name, scheduler, 6)
    x = start(sigmas, shape=(2, 4, 5, 7))
    out = run(name, gaussian_denoiser, x, sigmas, seed=1)
    assert out.shape == (2, 4, 5, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_a_constant_denoiser_is_reached_exactly(name):
    # With D(x) = x0 the ODE is linear in sigma, so every deterministic solver is exact and every
    # stochastic one ends on x0 too (its last step lands on the prediction).
    sigmas = ksampler_sigmas(name, "karras", 8)
    x0 = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    out = run(name, lambda x, sigma: x0, x0 + noise * sigmas[0], sigmas, seed=2)
    if name == "dpm_fast":
        # dpm_fast stops at the last non-zero sigma.
        expected = x0 + noise * sigmas[-2]
    elif name in ("uni_pc", "uni_pc_bh2"):
        # UniPC stops at sigma 0.001 instead of 0.
        expected = x0 + noise * 0.001
    else:
        expected = x0
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_follow_the_probability_flow_ode(name):
    sigmas = ksampler_sigmas(name, "karras", 25)
    x = start(sigmas)
    out = run(name, gaussian_denoiser, x, sigmas)
    sigma_end = float(sigmas[-2]) if name == "dpm_fast" else 0.0
    error = (out - ode_solution(x, sigmas[0], sigma_end)).abs().max().item()
    # Euler (and ddim, the same) is first order; everything else is at least second order.
    assert error < (0.3 if name in ("euler", "ddim") else 0.05), error


def test_higher_order_samplers_beat_euler():
    def error(name):
        sigmas = ksampler_sigmas(name, "karras", 12)
        x = start(sigmas)
        return (run(name, gaussian_denoiser, x, sigmas) - ode_solution(x, sigmas[0])).abs().max().item()

    euler = error("euler")
    for name in ("heun", "dpm_2", "lms", "dpmpp_2m", "uni_pc", "uni_pc_bh2"):
        assert error(name) < euler / 3, name


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                                  "dpmpp_3m_sde", "ddpm", "dpm_2_ancestral"])
def test_stochastic_samplers_sample_the_data_distribution(name):
    sigmas = ksampler_sigmas(name, "karras", 30)
    x = start(sigmas, shape=(1, 4, 64, 64))
    out = run(name, gaussian_denoiser, x, sigmas, seed=5)
    assert out.mean().item() == pytest.approx(MU, abs=0.05)
    assert out.std().item() == pytest.approx(S, abs=0.12)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_are_seeded(name):
    sigmas = ksampler_sigmas(name, "normal", 5)
    x = start(sigmas)
    first = run(name, gaussian_denoiser, x, sigmas, seed=7)
    again = run(name, gaussian_denoiser, x, sigmas, seed=7)
    other = run(name, gaussian_denoiser, x, sigmas, seed=8)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_step_callback_runs_once_per_step(name):
    sigmas = ksampler_sigmas(name, "beta", 7)
    steps = []
    calls = []

    def counting(x, sigma):
        calls.append(float(sigma))
        return gaussian_denoiser(x, sigma)

    run(name, counting, start(sigmas), sigmas, steps=steps)
    assert steps == list(range(len(sigmas) - 1))
    two_evals = ("heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde")
    if name not in two_evals:
        assert len(calls) == len(sigmas) - 1, calls


def test_a_callback_exception_stops_the_sampler():
    class Stop(Exception):
        pass

    def stop_at_two(i):
        if i == 2:
            raise Stop

    calls = []
    sigmas = ksampler_sigmas("euler", "normal", 10)
    with pytest.raises(Stop):
        SAMPLERS["euler"](lambda x, s: calls.append(1) or x, start(sigmas), sigmas, SamplerContext(0, stop_at_two))
    assert len(calls) == 3


def test_prepare_noise_is_one_cpu_draw_from_the_seed():
    latent = torch.zeros(2, 4, 6, 5)
    torch.manual_seed(1234)
    expected = torch.randn(2, 4, 6, 5)
    assert torch.equal(prepare_noise(latent, 1234), expected)
    assert prepare_noise(latent, 2**64 - 1).shape == latent.shape


def test_prepare_noise_with_batch_index_draws_images_one_at_a_time():
    latent = torch.zeros(2, 4, 6, 5)
    torch.manual_seed(99)
    singles = [torch.randn(1, 4, 6, 5) for _ in range(4)]
    noise = prepare_noise(latent, 99, batch_index=[3, 1])
    assert torch.equal(noise, torch.cat([singles[3], singles[1]]))


def test_default_noise_sampler_is_a_seeded_generator_on_the_device():
    x = torch.zeros(1, 4, 3, 3)
    a, b = default_noise_sampler(x, 5), default_noise_sampler(x, 5)
    first = a(1.0, 0.5)
    assert torch.equal(first, b(1.0, 0.5))
    expected = torch.Generator().manual_seed(5)
    assert torch.equal(first, torch.randn(1, 4, 3, 3, generator=expected))
    assert not torch.equal(first, a(0.5, 0.2))  # the stream advances


def test_brownian_tree_increments_are_consistent_and_unit_variance():
    x = torch.zeros(1, 4, 32, 32)
    tree = BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=11)
    same = BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=11)
    step = tree(torch.tensor(5.0), torch.tensor(3.0))
    assert step.std().item() == pytest.approx(1.0, abs=0.06)
    # The tree, not the query order, fixes the path.
    same(torch.tensor(1.0), torch.tensor(0.5))
    assert torch.allclose(same(torch.tensor(5.0), torch.tensor(3.0)), step, atol=1e-5)
    # Increments over adjacent intervals add up: W(3) - W(5) = (W(4) - W(5)) + (W(3) - W(4)).
    total = step * 2**0.5
    parts = tree(torch.tensor(5.0), torch.tensor(4.0)) + tree(torch.tensor(4.0), torch.tensor(3.0))
    assert torch.allclose(total, parts, atol=1e-4)
    other = BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=12)
    assert not torch.allclose(other(torch.tensor(5.0), torch.tensor(3.0)), step)
