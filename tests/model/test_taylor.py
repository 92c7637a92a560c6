"""Taylor-mode rules: every op's jet equals closed-form or nested-autograd derivatives."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from cst_neuro.model import taylor

K = 4  # orders checked


def _reference(f: Callable[[Tensor], Tensor], coeffs: Tensor) -> list[Tensor]:
    """d^q/ds^q f(Σ_j coeffs_j s^j) at s = 0, q = 0..K, by nested reverse-mode autograd."""
    s = torch.zeros((), dtype=coeffs.dtype, requires_grad=True)
    y = f(sum(coeffs[j] * s**j for j in range(coeffs.shape[0])))
    w = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(3))
    out, g = [], (y * w).sum()  # a random projection checks every element at once
    out.append(g.detach())
    for _ in range(K):
        (g,) = torch.autograd.grad(g, s, create_graph=True)
        out.append(g.detach())
    return out


def _check(
    jet_fn: Callable[[Tensor], Tensor], f: Callable[[Tensor], Tensor], coeffs: Tensor
) -> None:
    derivatives = taylor.to_derivatives(jet_fn(coeffs))
    w = torch.randn(
        derivatives.shape[1:], dtype=coeffs.dtype, generator=torch.Generator().manual_seed(3)
    )
    for q, expected in enumerate(_reference(f, coeffs)):
        torch.testing.assert_close((derivatives[q] * w).sum(), expected, rtol=1e-9, atol=1e-9)


def _layer_norm(a: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    # primitive ops: torch's fused layer_norm has wrong 3rd-order derivatives (pytorch#175754)
    centred = a - a.mean(-1, keepdim=True)
    return centred * ((centred * centred).mean(-1, keepdim=True) + 1e-5).rsqrt() * weight + bias


def test_compose_matches_closed_form_derivatives_of_exp_sin() -> None:
    s = torch.linspace(-2, 2, 9, dtype=torch.float64)
    # the jet of sin along s: sin, cos, -sin/2, -cos/6, sin/24
    sin_jet = torch.stack([s.sin(), s.cos(), -s.sin() / 2, -s.cos() / 6, s.sin() / 24])
    e = s.sin().exp()
    out = taylor.to_derivatives(taylor.compose(sin_jet, [e] * 5))
    c, n = s.cos(), s.sin()
    expected = [
        e,
        c * e,
        (c**2 - n) * e,
        (c**3 - 3 * n * c - c) * e,
        (c**4 - 6 * n * c**2 - 4 * c**2 + 3 * n**2 + n) * e,
    ]
    for q in range(5):
        torch.testing.assert_close(out[q], expected[q])


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    op=st.sampled_from(["mul", "gelu", "power", "layer_norm", "softmax"]),
)
def test_jet_rules_equal_nested_autograd(seed: int, op: str) -> None:
    g = torch.Generator().manual_seed(seed)
    coeffs = torch.randn(K + 1, 3, 6, generator=g, dtype=torch.float64)
    weight, bias = torch.randn(2, 6, generator=g, dtype=torch.float64)
    other = torch.randn(K + 1, 3, 1, generator=g, dtype=torch.float64)
    cases = {
        "mul": (lambda a: taylor.mul(a, a), lambda a: a * a),
        "gelu": (taylor.gelu, torch.nn.functional.gelu),
        "power": (
            lambda a: taylor.power(taylor.add0(taylor.mul(a, a), 0.5), -0.5),
            lambda a: (a * a + 0.5) ** -0.5,
        ),
        "layer_norm": (
            lambda a: taylor.layer_norm(a, weight, bias, 1e-5),
            lambda a: _layer_norm(a, weight, bias),
        ),
        "softmax": (taylor.softmax, lambda a: torch.softmax(a, -1)),
    }
    jet_fn, f = cases[op]
    _check(jet_fn, f, coeffs)
    if op == "mul":  # broadcasting against a jet of another shape
        path = lambda s: sum(other[j] * s**j for j in range(K + 1))  # noqa: E731
        derivatives = taylor.to_derivatives(taylor.mul(coeffs, other))
        s = torch.zeros((), dtype=torch.float64, requires_grad=True)
        y = (sum(coeffs[j] * s**j for j in range(K + 1)) * path(s)).sum()
        for q in range(1, K + 1):
            (y,) = torch.autograd.grad(y, s, create_graph=True)
            torch.testing.assert_close(derivatives[q].sum(), y.detach())


def test_softmax_jet_keeps_masked_entries_at_zero() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(K + 1, 2, 5, generator=g, dtype=torch.float64)
    keep = torch.tensor([True, True, False, True, False])
    masked = torch.cat([a[:1].masked_fill(~keep, -math.inf), a[1:].masked_fill(~keep, 0.0)])
    out = taylor.to_derivatives(taylor.softmax(masked))
    assert torch.all(out[:, :, ~keep] == 0)
    reference = taylor.to_derivatives(taylor.softmax(a[..., keep]))
    torch.testing.assert_close(out[..., keep], reference)


def test_linear_adds_bias_to_order_zero_and_order_zero_is_the_plain_op() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 5, generator=g)
    w, b = torch.randn(2, 5, generator=g), torch.randn(2, generator=g)
    out = taylor.linear(a, w, b)
    torch.testing.assert_close(out[0], torch.nn.functional.linear(a[0], w, b))
    torch.testing.assert_close(out[1:], torch.nn.functional.linear(a[1:], w))
    torch.testing.assert_close(taylor.gelu(a[:1])[0], torch.nn.functional.gelu(a[0]))
    ln = taylor.layer_norm(a[:1], w[0], w[1], 1e-5)[0]
    torch.testing.assert_close(ln, torch.nn.functional.layer_norm(a[0], (5,), w[0], w[1]))


def test_dropout_shares_one_mask_across_orders() -> None:
    a = torch.ones(4, 100, 8)
    torch.manual_seed(0)
    out = taylor.dropout(a, 0.5, training=True)
    assert torch.equal(out[0], out[3])
    assert 0 < (out[0] == 0).float().mean() < 1
    assert torch.equal(taylor.dropout(a, 0.5, training=False), a)
