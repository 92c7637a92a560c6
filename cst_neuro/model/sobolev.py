"""Sobolev losses for the CST: data term plus penalties on derivatives of the output.

W^{k,p} loss, after the paper (de Oliveira Fonseca et al., ICML 2023; METHOD.md):

    L = MSE(ŷ, y) + Σ_{q=1..k} λ_q · mean |h^q ∂^q ŷ / ∂c^q|^p

at collocation coordinates (random real-valued times between the observations; optionally
along y and x too). Only pure partial derivatives along the chosen axes are penalised, not
mixed ones. No target derivatives exist: the penalties pull the model's derivatives towards
0, which is what makes its output smooth. For n coordinates W^{k,p} embeds in the continuous
functions when kp > n; the defaults (k = 2, p = 2) satisfy it for (t, y, x).

Which loss goes with which `CSTConfig.mode`:
- "cst": `sobolev_loss`. Derivatives are exact derivatives of every output channel with
  respect to the continuous query coordinate, every order carrying gradient to the
  parameters. The context does not depend on the query coordinate, so only the decoder is
  differentiated: Taylor-mode propagation (`taylor`) of the encoding's closed-form jet.
- "paper": `input_jacobian_loss`, the RELEASED code's behaviour, kept for parity only:
  derivatives with respect to the tokens' input values, summed over outputs; order 2 adds a
  constant and order 3 adds exactly 0, so only order 1 trains (see METHOD.md).
- "transformer": `data_loss` on the real tokens (plain MSE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from cst_neuro.model.cst import CST, Context
from cst_neuro.model.layers import manual_attention
from cst_neuro.model.paper import PaperCST


@dataclass
class SobolevConfig:
    k: int = 2  # highest derivative order penalised
    p: float = 2.0  # exponent of the derivative penalties
    weights: float | tuple[float, ...] = 1e-2  # λ_1..λ_k; one number = the same for every order
    dims: tuple[int, ...] = (0,)  # coordinate axes differentiated: 0 = t; (0, 1, 2) adds y and x
    # derivatives are measured per `step` coordinate units (h^q ∂^q ŷ). Set it to the
    # sampling interval in model units (1/frames for a window normalised to [0, 1]) so that
    # λ weighs the change per sample, comparable across orders and window lengths.
    step: float | tuple[float, ...] = 1.0
    n_collocation: int = 256  # collocation points per sample (see `sample_collocation`)

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"SobolevConfig.k must be 0 or more, got {self.k}")
        if self.p <= 0:
            raise ValueError(f"SobolevConfig.p must be positive, got {self.p}")
        if isinstance(self.weights, tuple) and len(self.weights) != self.k:
            raise ValueError(
                f"SobolevConfig.weights has {len(self.weights)} entries for k={self.k}: "
                "give one weight per order, or a single number"
            )
        if isinstance(self.step, tuple) and len(self.step) != len(self.dims):
            raise ValueError(f"SobolevConfig.step needs one entry per axis in dims={self.dims}")

    @classmethod
    def released(cls) -> SobolevConfig:
        """The release's toy-data setting: k = 3, p = 3, weight 0.01 for every order."""
        return cls(k=3, p=3.0, weights=0.01)

    def lambdas(self) -> tuple[float, ...]:
        """λ_q for q = 1..k."""
        return self.weights if isinstance(self.weights, tuple) else (self.weights,) * self.k


class SobolevTerms(NamedTuple):
    """The loss and its parts, for logging: penalties are unweighted, one per order."""

    total: Tensor
    data: Tensor
    penalties: tuple[Tensor, ...]


def data_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over (B, Q, V), counting only queries where mask (B, Q) is True."""
    err = (pred - target) ** 2
    if mask is None:
        return err.mean()
    m = mask[..., None].to(err.dtype)
    return (err * m).sum() / (m.sum() * err.shape[-1]).clamp_min(1.0)


def sample_collocation(
    coords: Tensor,
    n: int,
    *,
    mask: Tensor | None = None,
    ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """n collocation points per sample: (B, n, C) coordinates and (B, n) ids (or None).

    Each point takes the place (y, x) and identity of a random observed token and a time
    drawn uniformly over the sample's observed time span, so it lands between frames.
    `generator` must live on `coords`' device.
    """
    B, device = coords.shape[0], coords.device
    valid = torch.ones(coords.shape[:2], dtype=torch.bool, device=device) if mask is None else mask
    t = coords[..., 0]
    t_min = torch.where(valid, t, torch.inf).amin(-1, keepdim=True)  # (B, 1)
    t_max = torch.where(valid, t, -torch.inf).amax(-1, keepdim=True)
    weights = valid.to(coords.dtype)  # uniform over each sample's observed tokens
    pick = torch.multinomial(weights, n, replacement=True, generator=generator)  # (B, n)
    points = coords.gather(1, pick[..., None].expand(-1, -1, coords.shape[-1])).clone()
    u = torch.rand(B, n, dtype=coords.dtype, device=device, generator=generator)
    points[..., 0] = t_min + u * (t_max - t_min)
    return points, None if ids is None else ids.gather(1, pick)


def coordinate_derivatives(
    model: CST,
    context: Context,
    coords: Tensor,
    ids: Tensor | None = None,
    *,
    order: int,
    dims: tuple[int, ...] = (0,),
) -> Tensor:
    """Exact ∂^q ŷ/∂c_d^q at (B, M, C) coordinates: (order + 1, len(dims), B, M, V).

    All axes go through the decoder in one pass: the queries are repeated once per axis,
    each copy differentiated along its own axis (queries are independent, so this is exact).
    """
    B, M, C = coords.shape
    n = len(dims)
    eye = torch.eye(C, dtype=coords.dtype, device=coords.device)
    directions = eye[list(dims)].repeat_interleave(M, dim=0).expand(B, -1, -1)  # (B, n*M, C)
    repeated = coords.repeat(1, n, 1)  # (B, n*M, C), axis-major like `directions`
    repeated_ids = None if ids is None else ids.repeat(1, n)
    out = model.decode_derivatives(
        context, repeated, repeated_ids, order=order, direction=directions
    )
    return out.view(order + 1, B, n, M, -1).transpose(1, 2)  # (order+1, n, B, M, V)


def sobolev_loss(
    model: CST,
    context: Context,
    query_coords: Tensor,
    target: Tensor,
    collocation_coords: Tensor,
    *,
    query_ids: Tensor | None = None,
    target_mask: Tensor | None = None,
    collocation_ids: Tensor | None = None,
    config: SobolevConfig | None = None,
) -> SobolevTerms:
    """Mode "cst": MSE at the queries plus Σ_q λ_q mean|h^q ∂^q ŷ/∂c^q|^p at collocation points.

    Args:
        model, context: a mode-"cst" CST and `model.encode(...)` of the window's inputs.
        query_coords, query_ids, target, target_mask: (B, Q, C), (B, Q), (B, Q, V), (B, Q)
            the data term's queries, their targets and which targets exist.
        collocation_coords, collocation_ids: (B, M, C), (B, M), e.g. from `sample_collocation`.
        config: k, p, λ, axes and step (default `SobolevConfig()`).
    """
    config = config or SobolevConfig()
    data = data_loss(model.decode(context, query_coords, query_ids), target, target_mask)
    if config.k == 0:
        return SobolevTerms(data, data, ())
    derivatives = coordinate_derivatives(
        model, context, collocation_coords, collocation_ids, order=config.k, dims=config.dims
    )
    step = derivatives.new_tensor(config.step).expand(len(config.dims)).view(-1, 1, 1, 1)
    penalties = tuple(
        ((step**q) * derivatives[q]).abs().pow(config.p).mean() for q in range(1, config.k + 1)
    )
    total = data + sum(lam * pen for lam, pen in zip(config.lambdas(), penalties, strict=True))
    return SobolevTerms(total, data, penalties)


def _per_sample_norm(x: Tensor, p: float) -> Tensor:
    """L_p norm over all but the batch axis: (B, ...) -> (B,)."""
    return torch.linalg.vector_norm(x.flatten(1), ord=p, dim=1)


def input_jacobian_loss(
    model: PaperCST,
    values: Tensor,
    coords: Tensor,
    is_real: Tensor,
    *,
    ids: Tensor | None = None,
    mask: Tensor | None = None,
    config: SobolevConfig | None = None,
) -> SobolevTerms:
    """RELEASED BEHAVIOUR, for parity in mode "paper": the release's Sobolev loss.

    Not a Sobolev norm in the coordinates. Reproduces vandijklab/CST `sobolev_loss` as trained:
    - the data term is the per-sample L_p norm (not raised to p) of the error at the real
      tokens, averaged over the batch;
    - the derivative is taken with respect to the tokens' input values (interpolated, and
      noise-perturbed in training), of the sum of all outputs;
    - order 1 keeps its graph and trains; order 2 is computed without a graph (it changes the
      loss value, trains nothing); order 3 and above are exactly 0;
    - each order adds λ_q times the per-sample L_p norm over the dummy tokens.

    Runs the forward itself (`values`, `coords`, `ids`, `mask` as from
    `dummies.add_dummy_tokens`, `is_real` (B, N)) with hand-written attention, because the
    fast kernels have no double backward. Default config: `SobolevConfig.released()`.
    """
    config = config or SobolevConfig.released()
    valid = torch.ones_like(is_real) if mask is None else mask
    real = (is_real & valid)[..., None].to(values.dtype)
    dummy = (~is_real & valid)[..., None].to(values.dtype)
    inputs = values.detach().requires_grad_(True)
    with manual_attention(model):
        pred = model.forward_tokens(inputs, coords, ids, mask)  # (B, N, V)
    data = _per_sample_norm((pred - values.detach()) * real, config.p).mean()
    penalties: list[Tensor] = []
    d = pred * valid[..., None]
    for q in range(1, config.k + 1):
        if q == 1:
            d = torch.autograd.grad(d.sum(), inputs, create_graph=True)[0]
        elif q == 2:  # released: create_graph=False, so no gradient and nothing beyond
            (grad,) = torch.autograd.grad(d.sum(), inputs, retain_graph=True, allow_unused=True)
            d = torch.zeros_like(d) if grad is None else grad
        else:
            d = torch.zeros_like(d)
        penalties.append(_per_sample_norm(d * dummy, config.p).mean())
    total = data + sum(lam * pen for lam, pen in zip(config.lambdas(), penalties, strict=True))
    return SobolevTerms(total, data, tuple(penalties))
