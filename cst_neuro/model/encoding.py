"""Continuous coordinate encoding with closed-form derivatives of every order.

Random Fourier features (Tancik et al., "Fourier Features Let Networks Learn High Frequency
Functions in Low Dimensional Domains", NeurIPS 2020) of normalised coordinates c = (t[, y, x]),
followed by a learned linear projection:

    φ(c) = [sin(ω·c), cos(ω·c)],   e(c) = W φ(c) + b,   ω ~ N(0, (2π σ)²) per coordinate.

The frequencies ω are drawn once from a seed and kept as a buffer, so they are saved with the
model (the CST release redrew them every step). Derivatives need no autograd: along a
direction u, d^q/ds^q sin(ω·(c + s u)) = (ω·u)^q sin(ω·c + qπ/2), and likewise for cos,
so `derivatives` returns the exact value and every derivative up to any order in one call.
Coordinates are expected normalised (time within a window in [0, 1], y and x in field-of-view
units); σ (`scale`) is then in cycles per unit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cst_neuro.model import taylor


class FourierEncoding(nn.Module):
    """Random Fourier features of coordinates plus a linear projection, with exact derivatives.

    Args:
        coord_dims: C, the number of coordinates (1 = time, 3 = t, y, x).
        n_fourier: F, the number of random frequencies (2F features: a sine and a cosine each).
        scale: σ, standard deviation of the frequencies in cycles per unit coordinate; one
            number for all coordinates or one per coordinate.
        d_model: D, the output width.
        seed: seeds the frequency draw (on the CPU, so every device gets the same ω).
    """

    def __init__(
        self,
        coord_dims: int,
        n_fourier: int,
        scale: float | tuple[float, ...],
        d_model: int,
        seed: int = 0,
    ) -> None:
        super().__init__()
        scales = torch.as_tensor(scale, dtype=torch.float32).expand(coord_dims)
        generator = torch.Generator().manual_seed(seed)
        freqs = torch.randn(coord_dims, n_fourier, generator=generator) * scales[:, None]
        self.register_buffer("freqs", 2 * math.pi * freqs)  # (C, F) angular frequencies ω
        self.proj = nn.Linear(2 * n_fourier, d_model)

    def features(self, coords: Tensor) -> Tensor:
        """φ(c) = [sin(ω·c), cos(ω·c)]: (..., C) -> (..., 2F)."""
        phase = coords @ self.freqs
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)

    def forward(self, coords: Tensor) -> Tensor:
        """e(c): (..., C) -> (..., D)."""
        return self.proj(self.features(coords))

    def feature_derivatives(self, coords: Tensor, order: int, direction: int | Tensor) -> Tensor:
        """d^q φ(c + s u)/ds^q at s = 0 for q = 0..order: (order + 1, ..., 2F).

        `direction` is a coordinate axis (u = e_axis, a partial derivative) or a tensor of
        directions broadcastable to `coords`' shape (..., C).
        """
        phase = coords @ self.freqs
        if isinstance(direction, int):
            rate = self.freqs[direction].expand_as(phase)  # (..., F) ω·e_axis
        else:
            rate = direction.to(phase) @ self.freqs  # (..., F) ω·u
        sin, cos = torch.sin(phase), torch.cos(phase)
        # the q-th derivative rotates (sin, cos) by q quarter turns: (cos, -sin), (-sin, -cos), ...
        cycle = [(sin, cos), (cos, -sin), (-sin, -cos), (-cos, sin)]
        rate = torch.cat([rate, rate], dim=-1)  # (..., 2F)
        return torch.stack([torch.cat(cycle[q % 4], dim=-1) * rate**q for q in range(order + 1)])

    def derivatives(self, coords: Tensor, order: int, direction: int | Tensor = 0) -> Tensor:
        """d^q e(c + s u)/ds^q at s = 0 for q = 0..order: (order + 1, ..., D).

        Order 0 is e(c) itself; the bias only enters order 0.
        """
        features = self.feature_derivatives(coords, order, direction)
        return taylor.linear(features, self.proj.weight, self.proj.bias)

    def jet(self, coords: Tensor, order: int, direction: int | Tensor = 0) -> Tensor:
        """Taylor coefficients d^q e/ds^q / q! for q = 0..order: the seed of the decoder's jet."""
        return taylor.from_derivatives(self.derivatives(coords, order, direction))
