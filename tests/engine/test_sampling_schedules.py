"""The SD sigma table, the nine schedulers and KSampler's step rules, checked against the formulas."""

from __future__ import annotations

import math

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

from farm.engine.sampling import SAMPLER_NAMES, SCHEDULER_NAMES, calculate_sigmas, ksampler_sigmas  # noqa: E402
from farm.engine.sampling.model_sampling import discrete_schedule  # noqa: E402
from farm.engine.sampling.schedulers import slice_sigmas  # noqa: E402


def reference_table() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


TABLE = reference_table()
SIGMA_MIN, SIGMA_MAX = float(np.float32(TABLE[0])), float(np.float32(TABLE[-1]))


def log_interp(t: float) -> float:
    lo, hi = math.floor(t), math.ceil(t)
    w = t - lo
    return math.exp((1 - w) * math.log(TABLE[lo]) + w * math.log(TABLE[hi]))


def test_sigma_table_matches_the_ldm_linear_schedule():
    ms = discrete_schedule()
    assert ms.sigmas.dtype == torch.float32 and ms.sigmas.shape == (1000,)
    np.testing.assert_allclose(ms.sigmas.numpy(), TABLE, rtol=1e-6)
    assert float(ms.sigma_min) == pytest.approx(0.029167, abs=1e-6)
    assert float(ms.sigma_max) == pytest.approx(14.614641, abs=1e-5)


def test_sigma_to_timestep_is_the_nearest_index_in_log_sigma():
    ms = discrete_schedule()
    for index in (0, 1, 500, 998, 999):
        assert int(ms.timestep(ms.sigmas[index])) == index
    # Just below the log-midpoint of two entries goes down, just above goes up.
    mid = math.exp((math.log(TABLE[400]) + math.log(TABLE[401])) / 2)
    assert int(ms.timestep(torch.tensor(mid * 0.9999))) == 400
    assert int(ms.timestep(torch.tensor(mid * 1.0001))) == 401
    assert int(ms.timestep(torch.tensor(100.0))) == 999
    assert int(ms.timestep(torch.tensor(1e-4))) == 0
    batch = ms.timestep(torch.tensor([14.6, 1.0, 0.03]))
    assert batch.tolist() == [999, int(np.argmin(np.abs(np.log(TABLE) - 0.0))), 0]


def test_timestep_to_sigma_interpolates_log_sigma():
    ms = discrete_schedule()
    assert float(ms.sigma(torch.tensor(946.42))) == pytest.approx(log_interp(946.42), rel=1e-5)
    assert float(ms.sigma(torch.tensor(10))) == pytest.approx(TABLE[10], rel=1e-6)
    assert float(ms.sigma(torch.tensor(2000.0))) == pytest.approx(TABLE[999], rel=1e-6)


def test_scheduler_names_are_comfyuis_order():
    assert SCHEDULER_NAMES == ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                               "normal", "linear_quadratic", "kl_optimal")
    assert SAMPLER_NAMES == ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
                             "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde",
                             "ddpm", "lcm", "ddim", "uni_pc", "uni_pc_bh2")


@pytest.mark.parametrize("n", [1, 20, 30])
def test_simple_takes_floored_strides_from_the_top(n):
    sigmas = calculate_sigmas("simple", n)
    timesteps = [999 - math.floor(i * 1000 / n) for i in range(n)]
    if n == 20:
        assert timesteps[:3] == [999, 949, 899]
    if n == 30:
        assert timesteps[:3] == [999, 966, 933]
    np.testing.assert_allclose(sigmas.numpy(), [TABLE[t] for t in timesteps] + [0.0], rtol=1e-6)


@pytest.mark.parametrize("n", [1, 7, 20])
def test_normal_spaces_timesteps_from_999_to_0_inclusive(n):
    expected = [log_interp(t) for t in np.linspace(999, 0, n)] + [0.0]
    sigmas = calculate_sigmas("normal", n)
    assert len(sigmas) == n + 1
    np.testing.assert_allclose(sigmas.numpy(), expected, rtol=2e-5)
    if n > 1:
        assert float(sigmas[-2]) == pytest.approx(SIGMA_MIN, rel=1e-5)


def test_sgm_uniform_drops_the_last_of_n_plus_one_timesteps():
    n = 10
    expected = [log_interp(t) for t in np.linspace(999, 0, n + 1)[:-1]] + [0.0]
    np.testing.assert_allclose(calculate_sigmas("sgm_uniform", n).numpy(), expected, rtol=2e-5)


@pytest.mark.parametrize("n", [1, 10, 25])
def test_karras_is_rho_7_between_the_table_ends(n):
    ramp = np.linspace(0, 1, n)
    expected = (SIGMA_MAX ** (1 / 7) + ramp * (SIGMA_MIN ** (1 / 7) - SIGMA_MAX ** (1 / 7))) ** 7
    np.testing.assert_allclose(calculate_sigmas("karras", n).numpy(), list(expected) + [0.0], rtol=1e-5)


def test_exponential_is_even_in_log_sigma():
    expected = np.exp(np.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), 12))
    np.testing.assert_allclose(calculate_sigmas("exponential", 12).numpy(), list(expected) + [0.0], rtol=1e-5)


@pytest.mark.parametrize("n, steps", [(10, 10), (20, 20), (30, 31), (7, 8)])
def test_ddim_uniform_can_give_more_steps_than_asked(n, steps):
    stride = 1000 // n
    indices = list(range(1, 1000, stride))[::-1]
    sigmas = calculate_sigmas("ddim_uniform", n)
    assert len(sigmas) - 1 == steps
    np.testing.assert_allclose(sigmas.numpy(), [TABLE[i] for i in indices] + [0.0], rtol=1e-6)


def test_beta_drops_duplicate_timesteps():
    n = 200
    quantiles = 1 - np.arange(n) / n
    timesteps = np.rint(scipy_stats.beta.ppf(quantiles, 0.6, 0.6) * 999).astype(int)
    unique = [t for i, t in enumerate(timesteps) if i == 0 or t != timesteps[i - 1]]
    assert len(unique) < n  # the Beta(0.6, 0.6) quantiles are flat near both ends
    sigmas = calculate_sigmas("beta", n)
    assert len(sigmas) == len(unique) + 1
    np.testing.assert_allclose(sigmas.numpy(), [TABLE[t] for t in unique] + [0.0], rtol=1e-6)
    assert torch.all(sigmas[:-1] > sigmas[1:])
    short = calculate_sigmas("beta", 10)
    assert len(short) == 11 and float(short[0]) == pytest.approx(SIGMA_MAX, rel=1e-6)


def test_linear_quadratic_is_linear_then_quadratic_in_one_minus_sigma():
    assert calculate_sigmas("linear_quadratic", 1).tolist() == pytest.approx([SIGMA_MAX, 0.0])
    n = 10
    sigmas = calculate_sigmas("linear_quadratic", n).double().numpy() / SIGMA_MAX
    progress = 1 - sigmas
    np.testing.assert_allclose(progress[:5], [i * 0.025 / 5 for i in range(5)], atol=1e-6)
    # The quadratic part: constant second difference, reaching 1 at the end with the linear slope
    # at the junction.
    assert progress[-1] == pytest.approx(1.0)
    second = np.diff(progress[5:], 2)
    np.testing.assert_allclose(second, second[0], atol=1e-5)
    assert np.all(np.diff(progress) > 0)


@pytest.mark.parametrize("n", [1, 2, 10])
def test_kl_optimal_is_even_in_arctan_sigma(n):
    sigmas = calculate_sigmas("kl_optimal", n)
    if n == 1:
        expected = [SIGMA_MAX]
    else:
        w = np.arange(n) / (n - 1)
        expected = np.tan(w * math.atan(SIGMA_MIN) + (1 - w) * math.atan(SIGMA_MAX))
    np.testing.assert_allclose(sigmas.numpy(), list(expected) + [0.0], rtol=1e-5)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_schedule_decreases_to_zero(scheduler):
    sigmas = calculate_sigmas(scheduler, 9)
    assert sigmas.dtype == torch.float32 and float(sigmas[-1]) == 0.0
    assert torch.all(sigmas[:-1] > sigmas[1:])


@pytest.mark.parametrize("sampler", ["dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"])
def test_discard_penultimate_samplers_compute_one_more_step_and_drop_it(sampler):
    full = calculate_sigmas("karras", 11)
    sigmas = ksampler_sigmas(sampler, "karras", 10)
    assert len(sigmas) == 11
    assert torch.equal(sigmas, torch.cat([full[:-2], full[-1:]]))
    assert torch.equal(ksampler_sigmas("euler", "karras", 10), calculate_sigmas("karras", 10))


def test_denoise_runs_the_tail_of_a_longer_schedule():
    assert torch.equal(ksampler_sigmas("euler", "normal", 10, 0.5), calculate_sigmas("normal", 20)[-11:])
    # int(10 / 0.3) = 33 steps, floored.
    assert torch.equal(ksampler_sigmas("euler", "karras", 10, 0.3), calculate_sigmas("karras", 33)[-11:])
    assert torch.equal(ksampler_sigmas("euler", "karras", 10, 0.99995), calculate_sigmas("karras", 10))
    assert len(ksampler_sigmas("euler", "karras", 10, 0.0)) == 0
    assert len(ksampler_sigmas("euler", "karras", 10, -1.0)) == 0
    discarded = ksampler_sigmas("dpm_2", "simple", 4, 0.5)
    full = calculate_sigmas("simple", 9)
    assert torch.equal(discarded, torch.cat([full[:-2], full[-1:]])[-5:])


def test_unknown_scheduler_is_refused_rather_than_replaced():
    with pytest.raises(ValueError, match="unknown scheduler 'no-such'"):
        ksampler_sigmas("euler", "no-such", 5)


def test_start_and_last_step_slice_and_force_full_denoise_zeroes_the_end():
    sigmas = calculate_sigmas("normal", 10)
    assert torch.equal(slice_sigmas(sigmas, 3, None), sigmas[3:])
    assert torch.equal(slice_sigmas(sigmas, None, 6), sigmas[:7])
    forced = slice_sigmas(sigmas, 2, 6, force_full_denoise=True)
    assert torch.equal(forced[:-1], sigmas[2:6]) and float(forced[-1]) == 0.0
    # last_step at or past the end changes nothing, forced or not.
    assert torch.equal(slice_sigmas(sigmas, None, 10, force_full_denoise=True), sigmas)
    assert torch.equal(slice_sigmas(sigmas, None, 10000), sigmas)
    assert slice_sigmas(sigmas, 10, None) is None
    assert slice_sigmas(sigmas, 4, 4) is None
    # The caller's tensor is left alone.
    assert float(sigmas[6]) > 0
