"""The linear interpolant a "cst" model corrects: against numpy.interp, its jet, and in the
network (a model whose head outputs zero predicts exactly the interpolant)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.model.cst import CST
from cst_neuro.model.interpolant import Readout, linear_jet

from ._helpers import make_tokens, tiny_config


@settings(max_examples=60, deadline=None)
@given(
    n_keys=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    n_invalid=st.integers(0, 3),
)
def test_matches_numpy_interp_with_held_ends(n_keys: int, seed: int, n_invalid: int) -> None:
    rng = np.random.default_rng(seed)
    times = np.sort(rng.choice(np.linspace(0, 1, 101), n_keys + n_invalid, replace=False))
    values = rng.normal(size=(times.size, 2))
    valid = np.ones(times.size, bool)
    valid[rng.choice(times.size, n_invalid, replace=False)] = False
    if not valid.any():
        valid[0] = True
    order = rng.permutation(times.size)  # keys need not be sorted
    queries = rng.uniform(-0.2, 1.2, size=9)
    jet = linear_jet(
        torch.tensor(queries)[None],
        torch.tensor(times[order])[None, None],
        torch.tensor(values[order])[None, None],
        torch.tensor(valid[order])[None, None],
        order=2,
        direction_t=torch.full((1, 9), 0.5, dtype=torch.float64),
    )
    t, v = times[valid], values[valid]
    expected = np.stack([np.interp(queries, t, v[:, d]) for d in range(2)], -1)
    np.testing.assert_allclose(jet[0, 0].numpy(), expected, atol=1e-12)
    h = 1e-7  # slope × the direction's time component, away from the knots
    inside = (queries > t[0]) & (queries < t[-1]) & (np.abs(queries[:, None] - t).min(1) > h)
    ahead = np.stack([np.interp(queries + h, t, v[:, d]) for d in range(2)], -1)
    slope = (ahead - expected) / h
    np.testing.assert_allclose(jet[1, 0].numpy()[inside], 0.5 * slope[inside], atol=1e-5)
    assert (jet[1, 0].numpy()[~inside & ((queries < t[0]) | (queries > t[-1]))] == 0).all()
    assert (jet[2] == 0).all()


def test_a_channel_without_observations_gets_zero() -> None:
    jet = linear_jet(
        torch.tensor([[0.3, 0.7]]),
        torch.tensor([[[0.1, 0.5], [0.2, 0.9]]]),
        torch.ones(1, 2, 2, 1),
        torch.tensor([[[True, True], [False, False]]]),
        order=1,
        direction_t=torch.ones(1, 2),
    )
    assert jet[:, 0, 0, 0].tolist() == pytest.approx([1.0, 0.0])
    assert jet[:, 0, 1, 0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("layout", "per_channel"), [("roi", False), ("roi", True), ("spirals", False)]
)
def test_a_zero_head_predicts_the_interpolant_of_its_own_channel(
    layout: str, per_channel: bool
) -> None:
    """ROIs use the latents' token cache; the spirals' decoder reads the tokens directly.
    With a per-channel gain (zero at first), channel 2's interpolant counts twice."""
    latents = 4 if layout == "roi" else 0
    config = tiny_config(
        layout, interpolant="linear", n_latent_times=latents, channel_gain=per_channel
    )
    torch.manual_seed(0)
    model = CST(config).double().eval()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    if per_channel:
        assert (model.channel_gain.weight == 0).all()
        with torch.no_grad():
            model.channel_gain.weight[2] = 1.0
    values, coords, ids = make_tokens(config, B=2, N=40, dtype=torch.float64)
    query_coords = torch.rand(2, 6, config.coord_dims, dtype=torch.float64)
    query_ids = ids[:, :6] if ids is not None else None
    assert not per_channel or (query_ids == 2).any()
    with torch.no_grad():
        context = model.encode(values, coords, ids)
        out = model.decode(context, query_coords, query_ids)
        derivatives = model.decode_derivatives(context, query_coords, query_ids, order=2)
    for b in range(2):
        for q in range(6):
            own = slice(None) if ids is None else (ids[b] == query_ids[b, q]).numpy()
            t, v = coords[b, :, 0].numpy()[own], values[b].numpy()[own]
            order = np.argsort(t)
            gain = 2.0 if per_channel and query_ids[b, q] == 2 else 1.0
            expected = [
                gain * np.interp(query_coords[b, q, 0].item(), t[order], v[order, d])
                for d in range(config.value_dim)
            ]
            np.testing.assert_allclose(out[b, q].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(derivatives[0].numpy(), out.numpy(), atol=1e-12)
    assert (derivatives[2] == 0).all()


def test_readout_is_a_signed_sum_over_valid_keys() -> None:
    """Σ_j ⟨a(x_q)_{v,u}, b_j⟩ · y_j[u] over the real keys, for every jet coefficient."""
    torch.manual_seed(0)
    readout = Readout(d_model=6, value_dim=2, rank=3).double()
    x = torch.randn(3, 2, 4, 6, dtype=torch.float64)  # (K+1, B, Q, D)
    keys = torch.randn(2, 1, 5, 3, dtype=torch.float64)  # shared by the queries
    values = torch.randn(2, 1, 5, 2, dtype=torch.float64)
    valid = torch.rand(2, 4, 5) > 0.4  # per query
    out = readout(x, keys, values, valid)
    a = (x @ readout.query.weight.T).view(3, 2, 4, 2, 2, 3)
    for k, b, q, v in np.ndindex(3, 2, 4, 2):
        expected = sum(
            float(a[k, b, q, v, u] @ keys[b, 0, j]) * float(values[b, 0, j, u])
            for j in range(5)
            if valid[b, q, j]
            for u in range(2)
        )
        assert float(out[k, b, q, v]) == pytest.approx(expected, abs=1e-12)
