"""Paper-mode dummy tokens: linear interpolation along time within each series."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.model.dummies import add_dummy_tokens, interpolate_in_time


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12))
def test_single_series_matches_numpy_interp(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    v = rng.normal(size=(n, 2))
    tq = rng.uniform(-0.2, 1.2, 9)  # also before the first and after the last observation
    out = interpolate_in_time(
        torch.from_numpy(v)[None],
        torch.from_numpy(t)[None, :, None],
        torch.from_numpy(tq)[None, :, None],
    )[0].numpy()
    order = np.argsort(t)
    for d in range(2):
        np.testing.assert_allclose(out[:, d], np.interp(tq, t[order], v[order, d]), atol=1e-12)


def test_interpolation_runs_within_each_roi_and_ignores_padding() -> None:
    # ROI 0 observed at t = 0, 0.5, 1 ; ROI 1 at t = 0.2, 0.6 ; last token is padding
    t = torch.tensor([[0.0, 0.2, 0.5, 0.6, 1.0, 0.55]], dtype=torch.float64)
    v = torch.tensor([[0.0, 10.0, 1.0, 20.0, 3.0, 99.0]], dtype=torch.float64)[..., None]
    ids = torch.tensor([[0, 1, 0, 1, 0, 0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    tq = torch.tensor([[0.25, 0.75, 0.4, 0.9, 0.0]], dtype=torch.float64)
    qid = torch.tensor([[0, 0, 1, 1, 1]])
    out = interpolate_in_time(v, t[..., None], tq[..., None], mask=mask, ids=ids, query_ids=qid)
    expected = torch.tensor([[0.5, 2.0, 15.0, 20.0, 10.0]], dtype=torch.float64)
    torch.testing.assert_close(out[..., 0], expected)


def test_series_by_spatial_position_when_there_are_no_ids() -> None:
    # (t, y, x): two patch positions, each observed at t = 0 and 1
    coords = torch.tensor([[[0.0, 0.1, 0.1], [0.0, 0.9, 0.9], [1.0, 0.1, 0.1], [1.0, 0.9, 0.9]]])
    values = torch.tensor([[[0.0], [100.0], [1.0], [200.0]]])
    query = torch.tensor([[[0.5, 0.1, 0.1], [0.25, 0.9, 0.9], [0.5, 0.5, 0.5]]])
    out = interpolate_in_time(values, coords, query)
    torch.testing.assert_close(out[..., 0], torch.tensor([[0.5, 125.0, 0.0]]))  # no series -> 0


def test_add_dummy_tokens_appends_interpolated_dummies() -> None:
    values = torch.randn(2, 5, 3)
    coords = torch.rand(2, 5, 1)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    dummy = torch.rand(2, 4, 1)
    tokens = add_dummy_tokens(values, coords, dummy, mask=mask)
    assert tokens.values.shape == (2, 9, 3) and tokens.coords.shape == (2, 9, 1)
    assert tokens.ids is None
    assert tokens.is_real.tolist() == [[True] * 5 + [False] * 4] * 2
    assert tokens.mask[1].tolist() == [True, True, True, False, False, True, True, True, True]
    torch.testing.assert_close(tokens.values[:, :5], values)
    torch.testing.assert_close(
        tokens.values[:, 5:], interpolate_in_time(values, coords, dummy, mask=mask)
    )
    with pytest.raises(ValueError, match="ids and dummy_ids go together"):
        add_dummy_tokens(values, coords, dummy, ids=torch.zeros(2, 5, dtype=torch.long))
