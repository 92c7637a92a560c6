"""Windows and tokens: splits without leakage, normalisation from training frames only."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cst_neuro.data import (
    CHANNEL_FEATURES,
    ChannelWindows,
    Normalizer,
    TimeSplit,
    channel_features,
    channel_view,
)
from cst_neuro.errors import InputError
from cst_neuro.schema import new_recording


def traces_recording(values: np.ndarray, *, fs: float = 10.0, offsets=None) -> xr.Dataset:
    n_frames, n_rois = values.shape
    coords = {
        "roi": np.arange(n_rois),
        "roi_y": ("roi", np.linspace(0, 50, n_rois)),
        "roi_x": ("roi", np.linspace(10, 20, n_rois)),
    }
    if offsets is not None:
        coords["roi_time_offset"] = ("roi", np.asarray(offsets, float))
    return new_recording(
        {"dff": (("time", "roi"), values.astype(np.float32))},
        time=np.arange(n_frames) / fs,
        fs=fs,
        source_format="test",
        source_name="unit",
        coords=coords,
    )


@settings(max_examples=40, deadline=None)
@given(
    n_frames=st.integers(10, 500),
    val=st.floats(0.0, 0.4),
    test=st.floats(0.0, 0.4),
    block=st.integers(1, 16),
    seed=st.integers(0, 5),
)
def test_time_split_is_disjoint_blocks(n_frames, val, test, block, seed) -> None:
    split = TimeSplit.blocks(
        n_frames, val_fraction=val, test_fraction=test, block_frames=block, seed=seed
    )
    total = split.train.astype(int) + split.val + split.test
    assert (total == 1).all()  # every frame in exactly one part
    for part in (split.val, split.test):  # whole blocks only
        blocks = part.reshape(-1, 1)[: n_frames // block * block].reshape(-1, block)
        assert (blocks.all(1) | ~blocks.any(1)).all()


def test_normalizer_sees_training_frames_only(rng: np.random.Generator) -> None:
    values = rng.normal(size=(200, 3)).astype(np.float32)
    split = TimeSplit.blocks(200, val_fraction=0.3, seed=1)
    before = Normalizer.fit(channel_view(traces_recording(values), "dff", patch=1), split.train)
    values[split.val] = 1e6  # changing held-out frames must not change the normalisation
    after = Normalizer.fit(channel_view(traces_recording(values), "dff", patch=1), split.train)
    np.testing.assert_array_equal(before.mean, after.mean)
    np.testing.assert_array_equal(before.std, after.std)


def test_tokens_carry_time_offsets_and_positions(rng: np.random.Generator) -> None:
    ds = traces_recording(rng.normal(size=(40, 2)), offsets=[0.0, 0.05])  # 0.5 frame
    windows = ChannelWindows(ds, window=8)  # time in frames (the CST's unit)
    block = windows.read(4)
    tokens = windows.tokens(block, 4, np.ones(block.shape[:2], bool))
    # frame 6 of ROI 1 (window frame 2) sits at 2 + 0.5 frames into the window
    row = np.flatnonzero(tokens["ids"] == 1)[2]
    assert tokens["coords"][row, 0] == pytest.approx(2.5)
    in_windows = ChannelWindows(ds, window=8, frames_per_unit=8)  # the paper's unit
    assert in_windows.tokens(block, 4, np.ones(block.shape[:2], bool))["coords"][row, 0] == (
        pytest.approx(2.5 / 8)
    )
    assert tokens["coords"][row, 1] == pytest.approx(50 / windows.fov)
    expected = (ds["dff"].values[6, 1] - windows.normalizer.mean[1, 0]) / windows.normalizer.std[
        1, 0
    ]
    assert tokens["values"][row, 0] == pytest.approx(expected, rel=1e-6)


def test_missing_samples_are_absent_tokens(rng: np.random.Generator) -> None:
    values = rng.normal(size=(20, 3))
    values[5, 1] = np.nan
    windows = ChannelWindows(traces_recording(values), window=10)
    block = windows.read(0)
    observed = windows.observed(block)
    assert not observed[5, 1] and observed.sum() == 29


def test_disallowed_frames_are_hidden_in_training_reads(rng: np.random.Generator) -> None:
    allowed = np.ones(20, bool)
    allowed[3:6] = False
    windows = ChannelWindows(traces_recording(rng.normal(size=(20, 2))), window=10, allowed=allowed)
    assert np.isnan(windows.read(0)[3:6]).all()
    assert np.isfinite(windows.read(0, masked=False)[3:6]).all()


def test_grid_patches_round_trip(rng: np.random.Generator) -> None:
    grid = rng.normal(size=(6, 8, 12)).astype(np.float32)
    ds = new_recording(
        {"grid": (("time", "y", "x"), grid)},
        time=np.arange(6) / 5.0,
        fs=5.0,
        source_format="test",
        source_name="g",
    )
    view = channel_view(ds, "grid", patch=4).values  # (T, 2*3 patches, 16)
    assert view.shape == (6, 6, 16)
    np.testing.assert_array_equal(view[:, 4].reshape(6, 4, 4), grid[:, 4:8, 4:8])


def test_window_longer_than_recording_is_an_error(rng: np.random.Generator) -> None:
    with pytest.raises(InputError, match="window of 64 frames does not fit"):
        ChannelWindows(traces_recording(rng.normal(size=(30, 2))), window=64)


def test_large_variables_stay_lazy(rng: np.random.Generator) -> None:
    ds = traces_recording(rng.normal(size=(50, 4))).chunk({"time": 10})
    windows = ChannelWindows(ds, window=10, memory_budget=100)
    assert windows.values.chunks is not None  # still dask: read window by window
    np.testing.assert_allclose(
        windows.read(20, masked=False),
        ChannelWindows(ds, window=10).read(20, masked=False),
        rtol=1e-5,
    )


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(1, 4), st.integers(1, 3)),
        elements=st.one_of(st.floats(-1e3, 1e3), st.just(np.nan)),
    ),
    st.floats(0.5, 500.0),
)
def test_channel_features_are_finite_and_bounded_for_any_samples(values, fs) -> None:
    features = channel_features(values, fs)
    assert features.shape == (values.shape[1], len(CHANNEL_FEATURES))
    assert np.isfinite(features).all() and np.abs(features).max() <= 2.0


def test_channel_features_tell_noise_from_a_slow_clean_trace() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 30.0
    slow = np.sin(2 * np.pi * 0.2 * t)
    values = np.stack([rng.standard_normal(t.size), slow], 1)[:, :, None]
    lag1, _, _, noise, _, frame = channel_features(values, 30.0).T
    assert abs(lag1[0]) < 0.05 and lag1[1] > 0.99
    assert 0.9 < noise[0] < 1.1 and noise[1] < 0.05
    assert frame == pytest.approx(np.log10(1 / 30) + 1.5)
