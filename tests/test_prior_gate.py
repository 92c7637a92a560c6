"""The gate that keeps the prior unless fine-tuning beats it beyond the validation noise."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.data import Tokens
from cst_neuro.prior_gate import Z, compare, frame_errors


def batch(times: np.ndarray, channels: int, values: np.ndarray) -> tuple[Tokens, Tokens]:
    """One validation batch: every channel observed at each of ``times`` (B = 1)."""
    q = times.size * channels
    coords = torch.zeros(1, q, 3)
    coords[0, :, 0] = torch.as_tensor(np.repeat(times, channels), dtype=torch.float32)
    qry = Tokens(
        coords=coords,
        values=torch.as_tensor(values, dtype=torch.float32).reshape(1, q, 1),
        ids=torch.as_tensor(np.tile(np.arange(channels), times.size))[None],
        mask=torch.ones(1, q, dtype=torch.bool),
        value_mask=torch.ones(1, q, 1, dtype=torch.bool),
    )
    return qry, qry


def test_frame_errors_group_a_frames_channels_into_one_unit() -> None:
    times, channels = np.array([0.1, 0.2, 0.3]), 4
    b = batch(times, channels, np.zeros(12))
    pred = torch.arange(12, dtype=torch.float32).reshape(1, 12, 1)
    sums, counts = frame_errors([pred], [b])
    np.testing.assert_array_equal(counts, [4, 4, 4])
    np.testing.assert_allclose(sums, [0 + 1 + 4 + 9, 16 + 25 + 36 + 49, 64 + 81 + 100 + 121])


@settings(max_examples=50, deadline=None)
@given(
    frames=st.integers(5, 200),
    channels=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_identical_models_gain_nothing(frames: int, channels: int, seed: int) -> None:
    errors = np.random.default_rng(seed).exponential(size=frames)
    counts = np.full(frames, float(channels))
    gain = compare((errors, counts), (errors, counts))
    assert gain.prior == gain.tuned and not gain.significant


def test_a_small_noisy_gain_keeps_the_prior_and_a_steady_one_does_not() -> None:
    """The single-cell case that motivated the gate: 1% lower on average, frame errors
    that scatter by 100% (heavy-tailed): within the noise. 20% lower on every frame: not."""
    rng = np.random.default_rng(0)
    prior = rng.exponential(size=341)
    counts = np.ones(341)
    noisy = prior * rng.uniform(0.5, 1.48, size=341)
    noisy *= 0.99 * prior.sum() / noisy.sum()
    weak = compare((prior, counts), (noisy, counts))
    assert weak.tuned < weak.prior and not weak.significant
    steady = compare((prior, counts), (0.8 * prior, counts))
    assert steady.significant and steady.prior - steady.tuned > Z * steady.stderr


def test_many_channels_of_one_frame_do_not_pass_for_independent_samples() -> None:
    """The same gain spread over 100 channels per frame has the standard error of its
    frames, not of 100 times as many samples."""
    rng = np.random.default_rng(1)
    per_frame = rng.normal(0.0, 1.0, size=50) + 0.05  # gain per frame: noisy, mean 0.05
    prior = np.full(50, 10.0)
    one = compare((prior, np.ones(50)), (prior - per_frame, np.ones(50)))
    many = compare(
        (100 * prior, np.full(50, 100.0)), (100 * (prior - per_frame), np.full(50, 100.0))
    )
    np.testing.assert_allclose(one.stderr, many.stderr)
    assert one.significant == many.significant
