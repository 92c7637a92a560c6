"""Metrics: NMSE invariances and limits, correlation, smoothness (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.evaluate import metrics as mt


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.01, 100.0),
    shift=st.floats(-100.0, 100.0),
)
def test_nmse_is_invariant_to_per_roi_affine_units(seed: int, scale: float, shift: float) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((50, 4))
    pred = truth + 0.3 * rng.standard_normal((50, 4))
    mask = rng.random((50, 4)) < 0.5
    frames = np.ones(50, bool)
    base = mt.nmse(pred, truth, mask, mt.roi_variance(truth, frames))
    t2, p2 = truth * scale + shift, pred * scale + shift
    moved = mt.nmse(p2, t2, mask, mt.roi_variance(t2, frames))
    assert np.isclose(base, moved, rtol=1e-9)
    assert np.isclose(mt.pearson(pred, truth, mask), mt.pearson(p2, t2, mask), atol=1e-9)


def test_nmse_limits(rng: np.random.Generator) -> None:
    truth = rng.standard_normal((400, 3))
    mask = np.ones_like(truth, bool)
    var = mt.roi_variance(truth, np.ones(400, bool))
    assert mt.nmse(truth, truth, mask, var) == 0.0
    mean_guess = np.broadcast_to(truth.mean(0), truth.shape)
    assert np.isclose(mt.nmse(mean_guess, truth, mask, var), 1.0)
    assert mt.pearson(truth, truth, mask) == 1.0


def test_nmse_skips_rois_without_targets(rng: np.random.Generator) -> None:
    truth = rng.standard_normal((20, 2))
    mask = np.zeros_like(truth, bool)
    mask[:, 0] = True
    per = mt.nmse_per_roi(truth + 1.0, truth, mask, np.ones(2))
    assert per[0] == 1.0 and np.isnan(per[1])
    assert mt.nmse(truth + 1.0, truth, mask, np.ones(2)) == 1.0


def test_affine_to_recovers_gain_and_baseline(rng: np.random.Generator) -> None:
    clean = rng.standard_normal((100, 2))
    noisy = clean * [2.0, 0.5] + [1.0, -3.0]
    np.testing.assert_allclose(mt.affine_to(clean, noisy, np.ones_like(clean, bool)), noisy)


def test_smoothness_zero_for_lines_and_slope_jump_sees_kinks() -> None:
    t = np.linspace(0, 1, 50)[:, None]
    assert mt.smoothness(3 * t + 1, 0.02, 1.0) < 1e-20
    # |t| has a slope jump of 2 at 0
    assert np.isclose(
        mt.slope_jump(np.array([0.1]), np.array([0.0]), np.array([0.1]), 0.1, 1.0), 2.0
    )
