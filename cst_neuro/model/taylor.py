"""Truncated Taylor arithmetic ("jets") for exact higher derivatives along one direction.

A jet of order K is a tensor whose leading axis holds the normalised Taylor coefficients
f_q = f^(q)(c) / q! for q = 0..K of a quantity along a line c + s·u through a coordinate.
Pushing the jet of a query's coordinate embedding through the decoder op by op (Taylor-mode
automatic differentiation; Griewank & Walther, "Evaluating Derivatives", 2008, ch. 13) gives
every derivative of the output up to order K in one pass. Each rule below is a handful of
ordinary tensor ops, so one ordinary backward pass carries gradient from every order to the
parameters: no double backward, no forward-mode AD, and no attention kernel has to support
either. Cost: a linear layer is applied to K + 1 coefficients; a nonlinearity costs O(K²)
elementwise products.

Why not nested autograd: PyTorch's fast attention kernels support neither forward-mode AD
nor double backward; nested jvp costs 2^k forward passes for order k; and torch's fused
layer_norm returns silently wrong higher derivatives (nested jvp from order 2,
pytorch/pytorch#196700; repeated backward from order 3, pytorch/pytorch#175754), which the
explicit rule below avoids.

Only the ops the CST query decoder uses are here: linear maps, products, elementwise
functions (GELU, powers), layer norm, softmax and dropout. Order-0 coefficients go through
the usual torch functions, so a jet of order 0 is the plain forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from cst_neuro.model import dropout as drop


def _factorials(a: Tensor) -> Tensor:
    """q! for q = 0..K, shaped to broadcast against the jet `a`."""
    factorials = a.new_tensor([math.factorial(q) for q in range(a.shape[0])])
    return factorials.view(-1, *([1] * (a.dim() - 1)))


def to_derivatives(jet: Tensor) -> Tensor:
    """Turn Taylor coefficients f^(q)/q! into derivatives f^(q)."""
    return jet * _factorials(jet)


def from_derivatives(derivatives: Tensor) -> Tensor:
    """Turn derivatives f^(q) (leading axis q = 0..K) into Taylor coefficients f^(q)/q!."""
    return derivatives / _factorials(derivatives)


def orders(a: Tensor) -> Tensor:
    """0, 1, ..., K shaped (K+1, 1, ..., 1) to broadcast against the jet `a`."""
    return torch.arange(a.shape[0], device=a.device).view(-1, *([1] * (a.dim() - 1)))


def add0(a: Tensor, c: Tensor | float) -> Tensor:
    """Add a constant (anything independent of the coordinate) to the order-0 coefficient only."""
    if a.shape[0] == 1:
        return a + c
    c = torch.as_tensor(c, dtype=a.dtype, device=a.device)
    return a + torch.where(orders(a) == 0, c, 0.0)  # one pass over a, no concatenation


def mul(a: Tensor, b: Tensor) -> Tensor:
    """Jet of the elementwise product a·b (Cauchy product; broadcasting like `*`)."""
    a_q, b_q = a.unbind(0), b.unbind(0)  # views whose gradients are stacked, not zero-filled
    return torch.stack(
        [_total([a_q[i] * b_q[q - i] for i in range(q + 1)]) for q in range(len(a_q))]
    )


def linear(a: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Jet of F.linear: the weight acts on every coefficient, the bias on order 0 only."""
    if a.shape[0] == 1 or bias is None:
        return F.linear(a, weight, bias)
    return add0(F.linear(a, weight), bias)


def compose(a: Tensor, derivatives: Sequence[Tensor]) -> Tensor:
    """Jet of g(a) for an elementwise g, given g^(m)(a_0) for m = 0..K (Faà di Bruno).

    g(a(s)) = Σ_m g^(m)(a_0)/m! · (a(s) - a_0)^m, and the powers of a(s) - a_0 are jets
    that start at order m, so the sum truncates at m = K.
    """
    order = a.shape[0] - 1
    out = [derivatives[0]] + [torch.zeros_like(derivatives[0])] * order
    shifted = a * (orders(a) > 0)  # a(s) - a_0
    power = shifted
    for m in range(1, order + 1):
        c = derivatives[m] / math.factorial(m)
        for q in range(m, order + 1):
            out[q] = out[q] + c * power[q]
        if m < order:
            power = mul(power, shifted)
    return torch.stack(out)


def power(a: Tensor, alpha: float) -> Tensor:
    """Jet of a**alpha (a > 0)."""
    x = a[0]
    derivatives = [x**alpha]
    coefficient = 1.0
    for m in range(1, a.shape[0]):
        coefficient *= alpha - m + 1
        derivatives.append(coefficient * x ** (alpha - m))
    return compose(a, derivatives)


def gelu(a: Tensor) -> Tensor:
    """Jet of the exact (erf) GELU, x·Φ(x).

    GELU^(1) = Φ + x·φ and, for m ≥ 2, GELU^(m) = (-1)^m · φ · (m·He_{m-2} - x·He_{m-1}),
    with He the probabilists' Hermite polynomials (φ^(j) = (-1)^j He_j φ).
    """
    if a.shape[0] == 1:
        return F.gelu(a)
    x = a[0]
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    derivatives = [F.gelu(x), cdf + x * pdf]
    hermite = [torch.ones_like(x), x]  # He_0, He_1
    for m in range(2, a.shape[0]):
        derivatives.append((-1) ** m * pdf * (m * hermite[m - 2] - x * hermite[m - 1]))
        hermite.append(x * hermite[m - 1] - (m - 1) * hermite[m - 2])
    return compose(a, derivatives)


def layer_norm(a: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Jet of F.layer_norm over the last axis (mean, variance and 1/sqrt all expanded)."""
    if a.shape[0] == 1:
        return F.layer_norm(a, a.shape[-1:], weight, bias, eps)
    centred = a - a.mean(-1, keepdim=True)
    variance = mul(centred, centred).mean(-1, keepdim=True)
    scale = power(add0(variance, eps), -0.5)
    return add0(mul(centred, scale) * weight, bias)


def softmax(a: Tensor) -> Tensor:
    """Jet of softmax over the last axis.

    With s = softmax(a): s' = s ⊙ (a' - <s, a'>). Writing u = a' (u_m = (m+1)·a_{m+1}) and
    g = <s, u>, the coefficient of order m + 1 is Σ_{r≤m} s_r ⊙ (u_{m-r} - g_{m-r}) / (m+1),
    which only needs coefficients already computed. Masked entries carry -inf at order 0
    and 0 above it; their weight s_0 = 0 then keeps every order at 0.
    """
    if a.shape[0] == 1:
        return torch.softmax(a, dim=-1)
    order, coefficients = a.shape[0] - 1, a.unbind(0)
    s = [torch.softmax(coefficients[0], dim=-1)]
    u = [(m + 1) * coefficients[m + 1] for m in range(order)]
    g: list[Tensor] = []
    for m in range(order):
        g.append(_total([(s[r] * u[m - r]).sum(-1, keepdim=True) for r in range(m + 1)]))
        s.append(_total([s[r] * (u[m - r] - g[m - r]) for r in range(m + 1)]) / (m + 1))
    return torch.stack(s)


def _total(terms: list[Tensor]) -> Tensor:
    """The sum of a non-empty list of tensors (broadcasting like ``+``)."""
    out = terms[0]
    for term in terms[1:]:
        out = out + term
    return out


def dropout(a: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask shared by every order (dropout is a fixed linear map)."""
    if not training or p == 0.0:
        return a
    if a.shape[0] == 1:
        return drop.dropout(a, p, training=True)
    return a * drop.keep_mask(a.shape[1:], p, a)
