"""Fixtures for the model tests."""

from __future__ import annotations

import pytest
from torch import Tensor
from torch.nn import functional as F


def _primitive_layer_norm(
    x: Tensor,
    normalized_shape: tuple[int, ...],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    centred = x - x.mean(-1, keepdim=True)
    y = centred * ((centred * centred).mean(-1, keepdim=True) + eps).rsqrt()
    return y if weight is None else y * weight + bias


@pytest.fixture
def primitive_layer_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """F.layer_norm from primitive ops, for autograd references of order 3 and above.

    torch's fused layer_norm gives silently wrong 3rd-order reverse-mode derivatives (its
    double backward treats the saved mean and 1/std as constants; pytorch/pytorch#175754).
    """
    monkeypatch.setattr(F, "layer_norm", _primitive_layer_norm)
