"""Splits: blocks in time, no sample both observed and scored, validation apart from test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.errors import InputError
from cst_neuro.evaluate.tasks import Task, forecast_origins, make_split, segments


@settings(max_examples=30, deadline=None)
@given(n=st.integers(20, 3000), seed=st.integers(0, 100))
def test_segments_are_contiguous_tenths_with_training_ends(n: int, seed: int) -> None:
    seg = segments(n, seed)
    assert seg.size == n and seg[0] == 0 and seg[-1] == 0
    assert np.count_nonzero(np.diff(seg)) <= 2 * 3  # three held-out runs: at most 6 changes
    assert abs((seg == 2).mean() - 0.2) < 0.1 and abs((seg == 1).mean() - 0.1) < 0.1


@pytest.mark.parametrize(
    "task",
    [
        Task("upsample", factor=4),
        Task("upsample", factor=8),
        Task("infill", fraction=0.5),
        Task("infill", fraction=0.2, block=8),
        Task("spatial"),
    ],
)
def test_targets_are_never_observed_and_val_is_apart_from_test(task: Task) -> None:
    split = make_split(task, 600, 30, seed=3)
    for targets in (split.val_targets, split.test_targets):
        assert targets.any() and not (targets & split.observed).any()
    assert not (split.val_targets & split.test_targets).any()
    assert np.all(split.segment[split.test_targets.any(1)] == 2)
    assert np.all(split.segment[split.val_targets.any(1)] == 1)
    assert split.train_observed[split.segment != 0].sum() == 0


def test_upsample_observes_every_kth_frame_and_infill_hides_the_fraction() -> None:
    up = make_split(Task("upsample", factor=4), 400, 3, seed=0)
    assert np.array_equal(np.flatnonzero(up.observed[:, 0]), np.arange(0, 400, 4))
    assert up.stride == 4
    inf = make_split(Task("infill", fraction=0.5, block=5), 1000, 2, seed=0)
    hidden = ~inf.observed[:, 0]
    assert abs(hidden.mean() - 0.5) < 0.01
    starts = np.flatnonzero(np.diff(hidden.astype(int)) == 1) + 1
    assert np.all(starts % 5 == 0)  # whole blocks


def test_spatial_hides_a_tenth_of_rois_outside_training() -> None:
    split = make_split(Task("spatial"), 500, 40, seed=1)
    hidden = ~split.observed.all(0)
    assert hidden.sum() == 4
    assert split.observed[split.segment == 0].all()
    assert not split.observed[np.ix_(split.segment != 0, hidden)].any()


def test_forecast_origins_score_only_test_frames() -> None:
    seg = segments(1000, 2)
    origins = forecast_origins(seg, 5, 32, 40)
    assert origins.size <= 40 and origins.min() >= 31
    for o in origins:
        assert np.all(seg[o + 1 : o + 6] == 2)


def test_bad_tasks_raise_input_errors() -> None:
    with pytest.raises(InputError, match="task must be one of"):
        Task("denoise")
    with pytest.raises(InputError, match="factor"):
        Task("upsample", factor=1)
    with pytest.raises(InputError, match="too short"):
        segments(10, 0)
