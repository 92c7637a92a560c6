"""FourierEncoding: frequencies stored once, analytic derivatives equal autograd and differences."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.model.encoding import FourierEncoding

from ._helpers import central_difference


def _encoding(coord_dims: int = 3, seed: int = 0) -> FourierEncoding:
    torch.manual_seed(seed)
    return FourierEncoding(
        coord_dims, n_fourier=8, scale=(1.0, 2.0, 0.5)[:coord_dims], d_model=5, seed=seed
    ).double()


def _autograd_derivatives(
    enc: FourierEncoding, coords: torch.Tensor, u: torch.Tensor, order: int
) -> list[torch.Tensor]:
    """d^q e(c + s u)/ds^q at s = 0 by nested autograd, one output element at a time."""
    s = torch.zeros((), dtype=coords.dtype, requires_grad=True)
    y = enc(coords + s * u)
    out = [y.detach()]
    flat = [y.flatten()[i] for i in range(y.numel())]
    for _ in range(order):
        flat = [torch.autograd.grad(f, s, create_graph=True)[0] for f in flat]
        out.append(torch.stack([f.detach() for f in flat]).view_as(y))
    return out


def test_frequencies_are_a_seeded_buffer_saved_with_the_model() -> None:
    a, b, c = (FourierEncoding(3, 8, 2.0, 5, seed=s) for s in (7, 7, 8))
    assert "freqs" in a.state_dict()
    assert not any(p is a.freqs for p in a.parameters())
    torch.testing.assert_close(a.freqs, b.freqs, rtol=0, atol=0)
    assert not torch.equal(a.freqs, c.freqs)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.freqs, a.freqs, rtol=0, atol=0)


def test_scale_sets_the_frequency_spread_per_coordinate() -> None:
    enc = FourierEncoding(2, 4096, (1.0, 10.0), 4, seed=0)
    spread = enc.freqs.std(dim=1) / (2 * math.pi)  # cycles per unit
    torch.testing.assert_close(spread, torch.tensor([1.0, 10.0]), rtol=0.05, atol=0)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    axis=st.integers(0, 2),
    order=st.integers(0, 5),
    use_vector=st.booleans(),
)
def test_analytic_derivatives_equal_autograd(
    seed: int, axis: int, order: int, use_vector: bool
) -> None:
    enc = _encoding(seed=seed)
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(4, 3, generator=g, dtype=torch.float64)
    if use_vector:
        u = torch.randn(4, 3, generator=g, dtype=torch.float64)
        direction: int | torch.Tensor = u
    else:
        u = torch.zeros(4, 3, dtype=torch.float64)
        u[:, axis] = 1.0
        direction = axis
    analytic = enc.derivatives(coords, order, direction)
    assert analytic.shape == (order + 1, 4, 5)
    for q, expected in enumerate(_autograd_derivatives(enc, coords, u, order)):
        torch.testing.assert_close(analytic[q], expected, rtol=1e-10, atol=1e-10)


def test_analytic_derivatives_equal_finite_differences() -> None:
    enc = _encoding(coord_dims=1)
    t = torch.rand(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    d = enc.derivatives(t, order=3, direction=0)
    for q in (1, 2, 3):
        fd = central_difference(lambda dt: enc(t + dt), q, h=2e-3)
        torch.testing.assert_close(d[q], fd, rtol=1e-5, atol=1e-6)


def test_jet_is_derivatives_over_factorials_and_bias_only_in_order_zero() -> None:
    enc = _encoding()
    coords = torch.rand(2, 3, 3, dtype=torch.float64)
    d = enc.derivatives(coords, order=3, direction=2)
    jet = enc.jet(coords, order=3, direction=2)
    for q in range(4):
        torch.testing.assert_close(jet[q], d[q] / math.factorial(q))
    torch.testing.assert_close(d[0], enc(coords))
    # a constant shift of the projection bias moves the value, never a derivative
    with torch.no_grad():
        enc.proj.bias += 1.0
    shifted = enc.derivatives(coords, order=3, direction=2)
    torch.testing.assert_close(shifted[1:], d[1:])
    torch.testing.assert_close(shifted[0], d[0] + 1.0)
