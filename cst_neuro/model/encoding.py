"""Continuous coordinate encoding with closed-form derivatives of every order.

Random Fourier features (Tancik et al., "Fourier Features Let Networks Learn High Frequency
Functions in Low Dimensional Domains", NeurIPS 2020) of normalised coordinates c = (t[, y, x]),
followed by a learned linear projection:

    φ(c) = [sin(ω·c), cos(ω·c)],   e(c) = W φ(c) + b,   ω ~ N(0, (2π σ)²) per coordinate.

The frequencies ω are drawn once from a seed and kept as a buffer, so they are saved with the
model (the CST release redrew them every step). With a ``time_band`` (f_lo, f_hi), time gets
frequencies of its own, log-spaced over the band (cycles per unit of time: per second for
the CST, so one feature set serves a 7.5 Hz and a 120 Hz recording alike), and the other
coordinates get the random ones. Derivatives need no autograd: along a
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
        time_band: (f_lo, f_hi) cycles per unit of coordinate 0: it gets its own F (or, with
            space, F/2) log-spaced frequencies, the other coordinates the rest, drawn with σ.
    """

    freqs: Tensor  # (C, F) angular frequencies, a buffer saved with the weights

    def __init__(
        self,
        coord_dims: int,
        n_fourier: int,
        scale: float | tuple[float, ...],
        d_model: int,
        seed: int = 0,
        time_band: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        scales = torch.as_tensor(scale, dtype=torch.float32).expand(coord_dims)
        generator = torch.Generator().manual_seed(seed)
        freqs = torch.randn(coord_dims, n_fourier, generator=generator) * scales[:, None]
        if time_band is not None:
            n_time = n_fourier if coord_dims == 1 else n_fourier // 2
            lo, hi = (math.log10(f) for f in time_band)
            freqs[:, :n_time] = 0.0  # (C, F): time alone in the first n_time columns
            freqs[0, :n_time] = torch.logspace(lo, hi, n_time)
            freqs[0, n_time:] = 0.0
        self.register_buffer("freqs", 2 * math.pi * freqs)  # (C, F) angular frequencies ω
        self.proj = nn.Linear(2 * n_fourier, d_model)

    def attenuation(self, time_unit: Tensor, resolution: float) -> Tensor:
        """(B, 2F) feature gains exp(-½ (ω_t·Δ / r)²) for a time unit Δ (B,) and r > 0.

        A feature turning by ω_t·Δ radians per unit of time (a frame) is faded once it turns
        faster than about r radians per frame: nothing finer than the frame's fraction is
        resolved, and its derivatives per frame stay bounded (order q by r^q) at any rate,
        as for anti-aliased positional encodings (Barron et al., mip-NeRF, ICCV 2021).
        """
        turn = self.freqs[0] * time_unit[:, None] / resolution  # (B, F)
        gain = torch.exp(-0.5 * turn * turn)
        return torch.cat([gain, gain], dim=-1)

    def features(self, coords: Tensor, gain: Tensor | None = None) -> Tensor:
        """φ(c) = [sin(ω·c), cos(ω·c)] (times ``gain``): (..., C) -> (..., 2F)."""
        phase = coords @ self.freqs
        out = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)
        return out if gain is None else out * gain

    def forward(self, coords: Tensor, gain: Tensor | None = None) -> Tensor:
        """e(c): (..., C) -> (..., D); ``gain`` (broadcast to (..., 2F)) scales the features."""
        return self.proj(self.features(coords, gain))

    def feature_derivatives(
        self, coords: Tensor, order: int, direction: int | Tensor, gain: Tensor | None = None
    ) -> Tensor:
        """d^q φ(c + s u)/ds^q at s = 0 for q = 0..order: (order + 1, ..., 2F).

        `direction` is a coordinate axis (u = e_axis, a partial derivative) or a tensor of
        directions broadcastable to `coords`' shape (..., C). A ``gain`` does not depend on
        the coordinate, so it scales every order alike.
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
        out = torch.stack([torch.cat(cycle[q % 4], dim=-1) * rate**q for q in range(order + 1)])
        return out if gain is None else out * gain

    def derivatives(
        self,
        coords: Tensor,
        order: int,
        direction: int | Tensor = 0,
        gain: Tensor | None = None,
    ) -> Tensor:
        """d^q e(c + s u)/ds^q at s = 0 for q = 0..order: (order + 1, ..., D).

        Order 0 is e(c) itself; the bias only enters order 0.
        """
        features = self.feature_derivatives(coords, order, direction, gain)
        return taylor.linear(features, self.proj.weight, self.proj.bias)

    def jet(
        self,
        coords: Tensor,
        order: int,
        direction: int | Tensor = 0,
        gain: Tensor | None = None,
    ) -> Tensor:
        """Taylor coefficients d^q e/ds^q / q! for q = 0..order: the seed of the decoder's jet."""
        return taylor.from_derivatives(self.derivatives(coords, order, direction, gain))
