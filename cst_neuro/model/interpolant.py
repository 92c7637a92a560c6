"""The classical interpolant that a "cst" model predicts a correction to, and a signed readout.

Softmax attention returns a convex combination of values: one decoder layer over a sparse
context behaves like a kernel smoother, so it cannot express a spline's negative weights,
and it flattens transients larger than any seen in training. With
`CSTConfig.interpolant = "linear"` the decoder predicts ŷ(q) = I(q) + f_θ(q), where I is the
linear interpolant in time of the query's own channel's observed values in the context
(held at the first or last observation outside them, 0 for a channel with none). The model
starts at the linear baseline, learns only the correction, and an observed amplitude
passes straight through. I is piecewise linear in t, so its Taylor jet along a direction u
has two non-zero coefficients: I and u_t · slope.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_jet(
    times: Tensor,
    key_times: Tensor,
    key_values: Tensor,
    key_valid: Tensor,
    order: int,
    direction_t: Tensor | None = None,
) -> Tensor:
    """Jet (order + 1, B, Q, V) of each query's linear interpolant of its keys.

    Args:
        times: (B, Q) query times.
        key_times, key_valid: (B, Q or 1, M) each query's candidate observations (times,
            and which are real); key_values: (B, Q or 1, M, V).
        order: the jet's order; coefficients above 1 are zero.
        direction_t: (B, Q) the time component of the jet's direction (None for order 0).
    """
    B, Q = times.shape
    M, V = key_times.shape[-1], key_values.shape[-1]
    key_times = key_times.expand(B, Q, M)
    key_values = key_values.expand(B, Q, M, V)
    query = times[..., None]
    left = key_valid & (key_times <= query)
    right = key_valid & (key_times >= query)
    big = torch.finfo(key_times.dtype).max
    at_left = torch.where(left, key_times, -big).argmax(-1, keepdim=True)  # (B, Q, 1)
    at_right = torch.where(right, key_times, big).argmin(-1, keepdim=True)
    has_left, has_right = left.any(-1), right.any(-1)

    def pick(index: Tensor) -> tuple[Tensor, Tensor]:
        value = key_values.gather(2, index[..., None].expand(B, Q, 1, V))[:, :, 0]
        return key_times.gather(2, index)[..., 0], value

    (t_left, v_left), (t_right, v_right) = pick(at_left), pick(at_right)
    t_left = torch.where(has_left, t_left, t_right)  # one side only: hold that observation
    v_left = torch.where(has_left[..., None], v_left, v_right)
    t_right = torch.where(has_right, t_right, t_left)
    v_right = torch.where(has_right[..., None], v_right, v_left)
    span = (t_right - t_left)[..., None]
    slope = torch.where(span > 0, (v_right - v_left) / span.clamp_min(1e-12), 0.0)
    any_key = (has_left | has_right)[..., None]
    value = torch.where(any_key, v_left + slope * (times - t_left)[..., None], 0.0)
    coefficients = [value]
    if order >= 1:
        along = 0.0 if direction_t is None else direction_t[..., None]
        coefficients.append(torch.where(any_key, slope, 0.0) * along)
    coefficients += [torch.zeros_like(value)] * (order - 1)
    return torch.stack(coefficients)


class Readout(nn.Module):
    """A signed linear readout of the query's own-channel samples: Σ_j w_qj · y_j.

    Softmax attention weights are positive and sum to one; a spline's or a Wiener filter's
    weights are not. Here w_qj = ⟨a(x_q), b(t_j)⟩ (one per pair of value entries) from the
    decoder's final state x_q and the key's time embedding, unnormalised and free in sign,
    a rank-`rank` bilinear form. Linear in x_q, so its Taylor jet is the jet of a(x_q)
    contracted with the (constant) keys. Initialised like every linear layer of the
    network (normal, sd 0.02), so it starts as a small term.
    """

    def __init__(self, d_model: int, value_dim: int, rank: int) -> None:
        super().__init__()
        self.value_dim, self.rank = value_dim, rank
        self.query = nn.Linear(d_model, value_dim * value_dim * rank, bias=False)
        self.key = nn.Linear(d_model, rank)  # from a key's time embedding

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, valid: Tensor) -> Tensor:
        """Jet (K+1, B, Q, V) from the state jet x (K+1, B, Q, D), keys (B, Q or 1, M, r),
        values (B, Q or 1, M, V) and which keys are real (B, Q or 1, M)."""
        K1, B, Q = x.shape[:3]
        V, r = self.value_dim, self.rank
        a = F.linear(x, self.query.weight).view(K1, B, Q, V, V, r)
        keys = keys * valid[..., None].to(keys.dtype)
        if keys.shape[1] == 1 and values.shape[1] == 1:  # keys shared by the row's queries
            weights = torch.einsum("kbqvur,bmr->kbqmvu", a, keys[:, 0])
            return torch.einsum("kbqmvu,bmu->kbqv", weights, values[:, 0])
        weights = torch.einsum("kbqvur,bqmr->kbqmvu", a, keys.expand(B, Q, -1, r))
        return torch.einsum("kbqmvu,bqmu->kbqv", weights, values.expand(B, Q, -1, V))
