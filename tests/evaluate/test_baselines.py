"""Baselines: exact where the maths says so, on random signals (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.evaluate import baselines as bl

coef = st.floats(-5, 5, allow_nan=False)


def grid(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed frames every k-th frame and all frames in between (interpolation range)."""
    t_obs = np.arange(0, n * k, k, dtype=np.float64)
    return t_obs, np.linspace(t_obs[0], t_obs[-1], 5 * n)


@settings(max_examples=40, deadline=None)
@given(a=coef, b=coef, n=st.integers(3, 20), k=st.integers(1, 8))
def test_interpolators_are_exact_on_straight_lines(a: float, b: float, n: int, k: int) -> None:
    t_obs, t_new = grid(n, k)
    y = (a * t_obs + b)[:, None]
    for name in ("linear", "pchip", "cubic"):
        got = bl.INTERPOLATORS[name](t_obs, y, t_new)[:, 0]
        np.testing.assert_allclose(got, a * t_new + b, atol=1e-8 * (1 + abs(a) * t_new.max()))


@settings(max_examples=30, deadline=None)
@given(c=st.lists(coef, min_size=4, max_size=4), n=st.integers(4, 15))
def test_splines_pass_through_the_samples_and_pchip_keeps_monotone_data_monotone(c, n) -> None:
    t_obs, t_new = grid(n, 3)
    y = np.polyval(c, t_obs / t_obs[-1])[:, None]
    for name in ("linear", "pchip", "cubic", "hold"):
        np.testing.assert_allclose(bl.INTERPOLATORS[name](t_obs, y, t_obs), y, atol=1e-9)
    mono = np.cumsum(np.abs(y[:, 0]) + 0.1)[:, None]
    assert np.all(np.diff(bl.pchip(t_obs, mono, t_new)[:, 0]) >= -1e-9)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(coef, min_size=3, max_size=12), k=st.integers(1, 5))
def test_hold_last_repeats_the_previous_sample(values: list[float], k: int) -> None:
    t_obs = np.arange(len(values), dtype=np.float64) * k
    y = np.asarray(values)[:, None]
    t_new = t_obs[:-1] + 0.5 * k
    np.testing.assert_array_equal(bl.hold_last(t_obs, y, t_new), y[:-1])


def test_gp_without_noise_interpolates_and_with_noise_shrinks(rng: np.random.Generator) -> None:
    t_obs = np.arange(40, dtype=np.float64)
    y = rng.standard_normal((40, 3))
    exact = bl.gp(t_obs, y, t_obs, length=1.0, noise=1e-8)
    np.testing.assert_allclose(exact, y, atol=1e-4)
    smooth = bl.gp(t_obs, y, t_obs, length=1.0, noise=1.0)
    assert np.abs(smooth).mean() < np.abs(y).mean()  # shrinks towards the prior mean 0


def test_low_rank_at_full_rank_is_linear(rng: np.random.Generator) -> None:
    t_obs = np.arange(0, 60, 3, dtype=np.float64)
    y = rng.standard_normal((t_obs.size, 6))
    t_new = np.arange(0, 58, dtype=np.float64)
    comps = bl.pca_components(y)
    np.testing.assert_allclose(
        bl.low_rank(t_obs, y, t_new, components=comps, rank=6), bl.linear(t_obs, y, t_new)
    )


def test_ridge_recovers_a_linear_map(rng: np.random.Generator) -> None:
    x = rng.standard_normal((200, 5))
    w = rng.standard_normal((5, 2))
    y = x @ w + 3.0
    np.testing.assert_allclose(bl.ridge(x, y, x, alpha=1e-9), y, atol=1e-6)


def test_idw_nearest_takes_the_closest_roi() -> None:
    z = np.arange(12, dtype=np.float64).reshape(4, 3)
    positions = np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0]])
    seen = np.array([True, True, False])
    np.testing.assert_array_equal(bl.idw(z, seen, positions, np.array([2]), k=1)[:, 0], z[:, 0])


def test_ar_and_var_forecast_an_exact_ar1_process() -> None:
    z = np.zeros((100, 2))
    z[0] = [1.0, -2.0]
    for t in range(1, 100):
        z[t] = 0.9 * z[t - 1]
    frames = np.ones(100, bool)
    coef = bl.fit_ar(z, frames, order=1)
    hist = z[None, 10:20]
    truth = z[None, 20:24]
    np.testing.assert_allclose(bl.ar_forecast(hist, 4, coef), truth, atol=1e-8)
    np.testing.assert_allclose(
        bl.var_forecast(hist, 4, bl.fit_var(z, frames, 1e-9)), truth, atol=1e-6
    )
    np.testing.assert_array_equal(bl.persistence(hist, 2), np.repeat(z[None, 19:20], 2, axis=1))
