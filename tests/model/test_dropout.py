"""The CPU dropout mask: drop rate, scaling, seeding."""

from __future__ import annotations

import pytest
import torch

from cst_neuro.model.dropout import dropout, keep_mask


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_and_scale_match_inverted_dropout(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p, training=True)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / x.numel()) ** 0.5 + 2**-15
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)))


def test_seeded_and_off_outside_training() -> None:
    x = torch.randn(3, 5, 7)
    torch.manual_seed(1)
    a = dropout(x, 0.3, training=True)
    torch.manual_seed(1)
    b = dropout(x, 0.3, training=True)
    assert torch.equal(a, b)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x


def test_mask_shape_dtype_and_odd_sizes() -> None:
    like = torch.zeros(1, dtype=torch.float64)
    mask = keep_mask((3, 7, 5), 0.2, like)  # 105 elements: not a multiple of 4 lanes
    assert mask.shape == (3, 7, 5) and mask.dtype == torch.float64
    assert set(mask.unique().tolist()) <= {0.0, 1 / 0.8}
