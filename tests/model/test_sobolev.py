"""Sobolev losses: exact coordinate derivatives, gradients at every order, the released loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from cst_neuro.model.cst import CST
from cst_neuro.model.dummies import add_dummy_tokens
from cst_neuro.model.layers import manual_attention
from cst_neuro.model.paper import PaperCST
from cst_neuro.model.sobolev import (
    SobolevConfig,
    coordinate_derivatives,
    data_loss,
    input_jacobian_loss,
    sample_collocation,
    sobolev_loss,
)

from ._helpers import central_difference, make_tokens, tiny_config, tiny_paper_config


def _setup(layout: str = "roi", **overrides: object):
    config = tiny_config(layout, **overrides)
    torch.manual_seed(0)
    model = CST(config).double().eval()
    values, coords, ids = make_tokens(config, B=2, N=14, dtype=torch.float64)
    _, query_coords, query_ids = make_tokens(config, B=2, N=5, seed=1, dtype=torch.float64)
    return model, values, coords, ids, query_coords, query_ids


def _direction(coords: Tensor, axis: int) -> Tensor:
    u = torch.zeros_like(coords)
    u[..., axis] = 1.0
    return u


READOUT = {"interpolant": "linear", "readout_rank": 3}


@pytest.mark.parametrize(
    ("layout", "axis", "latents", "order", "extra"),
    [
        ("roi", 0, 4, 4, {}),
        ("roi", 2, 4, 3, {}),
        ("patches", 1, 0, 3, {}),
        ("spirals", 0, 0, 3, {}),
        ("roi", 0, 4, 3, READOUT),
        ("spirals", 0, 0, 3, READOUT),
    ],
)
def test_derivatives_equal_nested_autograd_through_decode(
    layout: str, axis: int, latents: int, order: int, extra: dict, primitive_layer_norm: None
) -> None:
    model, values, coords, ids, query_coords, query_ids = _setup(
        layout, n_latent_times=latents, **extra
    )
    if model.readout is not None:  # as large as the other terms (it starts small)
        torch.nn.init.normal_(
            model.readout.query.weight, generator=torch.Generator().manual_seed(3)
        )
    mask = torch.ones(values.shape[:2], dtype=torch.bool)
    mask[0, -3:] = False  # a padded context when there are no latents
    context = model.encode(values, coords, ids, mask)
    d = model.decode_derivatives(context, query_coords, query_ids, order=order, direction=axis)
    y0 = model.decode(context, query_coords, query_ids)
    torch.testing.assert_close(d[0], y0, rtol=1e-12, atol=1e-12)
    # a random weighting of every (query, channel) checks all channels in one pass; queries
    # are independent, so the gradient of the weighted sum is the per-query derivative
    w = torch.randn(y0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with manual_attention(model):  # the fast kernels have no double backward
        x = query_coords.clone().requires_grad_(True)
        g = model.decode(context, x, query_ids) * w
        for q in range(1, order + 1):
            (g,) = torch.autograd.grad(g.sum(), x, create_graph=True)
            g = g[..., axis]
            torch.testing.assert_close((d[q] * w).sum(-1), g, rtol=1e-9, atol=1e-9)


def test_derivatives_along_any_direction_equal_finite_differences_of_decode() -> None:
    model, values, coords, ids, query_coords, query_ids = _setup("roi")
    context = model.encode(values, coords, ids)
    u = torch.randn(
        query_coords.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    d = model.decode_derivatives(context, query_coords, query_ids, order=3, direction=u)
    for q in (1, 2, 3):
        fd = central_difference(
            lambda s: model.decode(context, query_coords + s * u, query_ids), q, h=3e-4
        )
        scale = d[q].abs().max().item()
        torch.testing.assert_close(d[q], fd, rtol=0, atol=1e-5 * scale)


class _SineModel:
    """A stand-in with a known closed form: ŷ(t, y) = A sin(ω t + y) in every channel."""

    A, w = 0.5, 3.0

    def decode(self, context: None, coords: Tensor, ids: None = None) -> Tensor:
        return self.A * torch.sin(self.w * coords[..., :1] + coords[..., 1:2]).expand(-1, -1, 2)

    def decode_derivatives(self, context, coords, ids=None, *, order, direction) -> Tensor:
        rate = (direction * torch.tensor([self.w, 1.0], dtype=coords.dtype)).sum(-1, keepdim=True)
        phase = self.w * coords[..., :1] + coords[..., 1:2]
        out = [self.A * rate**q * torch.sin(phase + q * math.pi / 2) for q in range(order + 1)]
        return torch.stack(out).expand(-1, -1, -1, 2)


def test_penalties_of_a_known_function_equal_the_analytic_ones() -> None:
    coords = torch.rand(3, 50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(3, 50, 2, dtype=torch.float64)
    config = SobolevConfig(k=3, p=3.0, weights=(1.0, 0.1, 0.01), dims=(0, 1), step=(0.5, 2.0))
    terms = sobolev_loss(_SineModel(), None, coords, target, coords, config=config)  # type: ignore[arg-type]
    A, w = _SineModel.A, _SineModel.w
    phase = w * coords[..., 0] + coords[..., 1]
    for q in (1, 2, 3):
        along_t = (0.5**q * A * w**q * torch.sin(phase + q * math.pi / 2)).abs() ** 3
        along_y = (2.0**q * A * torch.sin(phase + q * math.pi / 2)).abs() ** 3
        torch.testing.assert_close(terms.penalties[q - 1], torch.cat([along_t, along_y]).mean())
    torch.testing.assert_close(terms.data, (A * torch.sin(phase)).pow(2).mean())
    expected = terms.data + sum(
        lam * pen for lam, pen in zip((1.0, 0.1, 0.01), terms.penalties, strict=True)
    )
    torch.testing.assert_close(terms.total, expected)


def test_coordinate_derivatives_batches_axes_exactly() -> None:
    model, values, coords, ids, query_coords, query_ids = _setup("roi")
    context = model.encode(values, coords, ids)
    together = coordinate_derivatives(model, context, query_coords, query_ids, order=2, dims=(0, 2))
    assert together.shape == (3, 2, 2, 5, 1)
    for i, axis in enumerate((0, 2)):
        alone = model.decode_derivatives(context, query_coords, query_ids, order=2, direction=axis)
        torch.testing.assert_close(together[:, i], alone, rtol=1e-12, atol=1e-12)


def test_every_order_carries_gradient_to_encoder_and_decoder() -> None:
    model, values, coords, ids, query_coords, query_ids = _setup("roi", dropout=0.1)
    model.train()
    context = model.encode(values, coords, ids)
    config = SobolevConfig(k=3, p=2.0, dims=(0, 1))
    target = torch.zeros(2, 5, 1, dtype=torch.float64)
    terms = sobolev_loss(
        model,
        context,
        query_coords,
        target,
        query_coords,
        query_ids=query_ids,
        collocation_ids=query_ids,
        config=config,
    )
    assert len(terms.penalties) == 3
    watched = {"encoder (latents)": model.latent_embed, "decoder": model.decoder[0].mlp.fc.weight}
    for q, penalty in enumerate(terms.penalties, start=1):
        grads = torch.autograd.grad(penalty, list(watched.values()), retain_graph=True)
        for (where, _), grad in zip(watched.items(), grads, strict=True):
            assert grad.abs().sum() > 0, f"order {q} gives no gradient to the {where}"


def test_k0_is_the_data_term_alone() -> None:
    model, values, coords, ids, query_coords, query_ids = _setup("roi")
    context = model.encode(values, coords, ids)
    target = torch.randn(2, 5, 1, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True, True], [True] * 5])
    terms = sobolev_loss(
        model,
        context,
        query_coords,
        target,
        query_coords[:, :0],
        query_ids=query_ids,
        target_mask=mask,
        config=SobolevConfig(k=0),
    )
    pred = model.decode(context, query_coords, query_ids)
    torch.testing.assert_close(terms.total, ((pred - target) ** 2)[mask].mean())
    assert terms.penalties == ()


def test_sample_collocation_draws_times_inside_the_span_at_observed_places() -> None:
    config = tiny_config("roi")
    _, coords, ids = make_tokens(config, B=2, N=20)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 10:] = False
    a = sample_collocation(
        coords, 64, mask=mask, ids=ids, generator=torch.Generator().manual_seed(0)
    )
    b = sample_collocation(
        coords, 64, mask=mask, ids=ids, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    points, point_ids = a
    assert points.shape == (2, 64, 3) and point_ids.shape == (2, 64)
    for i in range(2):
        t = coords[i, mask[i], 0]
        assert t.min() <= points[i, :, 0].min() and points[i, :, 0].max() <= t.max()
        observed = {(*coords[i, n, 1:].tolist(), int(ids[i, n])) for n in range(20) if mask[i, n]}
        for p in range(64):
            assert (*points[i, p, 1:].tolist(), int(point_ids[i, p])) in observed


def test_data_loss_counts_only_existing_targets() -> None:
    pred, target = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]]])
    assert data_loss(pred, target, torch.tensor([[True, True, False]])).item() == pytest.approx(2.5)
    assert data_loss(pred, target).item() == pytest.approx((1 + 4 + 81) / 3)


def _paper_batch():
    config = tiny_paper_config("spirals", input_noise=0.1)
    torch.manual_seed(0)
    model = PaperCST(config).double().train()
    values, coords, _ = make_tokens(config, B=2, N=10, dtype=torch.float64)
    dummy = torch.rand(2, 12, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False
    return model, add_dummy_tokens(values, coords, dummy, mask=mask)


def test_input_jacobian_loss_reproduces_the_release() -> None:
    model, tokens = _paper_batch()
    torch.manual_seed(7)
    terms = input_jacobian_loss(
        model, tokens.values, tokens.coords, tokens.is_real, mask=tokens.mask
    )
    p = 3.0
    # recompute by hand with the same noise draw
    torch.manual_seed(7)
    x = tokens.values.clone().requires_grad_(True)
    with manual_attention(model):
        pred = model.forward_tokens(x, tokens.coords, mask=tokens.mask)
    real = (tokens.is_real & tokens.mask)[..., None]
    dummy = (~tokens.is_real & tokens.mask)[..., None]
    data = torch.stack(
        [((pred - tokens.values) * real)[i].abs().pow(p).sum() ** (1 / p) for i in range(2)]
    ).mean()
    torch.testing.assert_close(terms.data, data)
    (d1,) = torch.autograd.grad((pred * tokens.mask[..., None]).sum(), x, create_graph=True)
    pen1 = torch.stack([(d1 * dummy)[i].abs().pow(p).sum() ** (1 / p) for i in range(2)]).mean()
    torch.testing.assert_close(terms.penalties[0], pen1)
    # order 2 adds to the value but carries no gradient; order 3 is exactly 0
    assert terms.penalties[0].requires_grad and not terms.penalties[1].requires_grad
    assert terms.penalties[1] > 0 and terms.penalties[2] == 0
    torch.testing.assert_close(terms.total, terms.data + 0.01 * sum(terms.penalties))
    grads = torch.autograd.grad(terms.total, list(model.parameters()), retain_graph=True)
    trained = torch.autograd.grad(terms.data + 0.01 * terms.penalties[0], list(model.parameters()))
    for g, h in zip(grads, trained, strict=True):
        torch.testing.assert_close(g, h)


def test_sobolev_config_validation() -> None:
    assert SobolevConfig(k=3, weights=0.5).lambdas() == (0.5, 0.5, 0.5)
    assert SobolevConfig.released() == SobolevConfig(k=3, p=3.0, weights=0.01)
    with pytest.raises(ValueError, match="one weight per order"):
        SobolevConfig(k=2, weights=(1.0,))
    with pytest.raises(ValueError, match="one entry per axis"):
        SobolevConfig(dims=(0, 1), step=(1.0,))
