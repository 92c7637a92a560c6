"""The per-channel blend with linear interpolation, chosen on validation frames."""

from __future__ import annotations

import numpy as np
import torch

from cst_neuro.blend import choose_blend
from cst_neuro.data import pad_tokens
from cst_neuro.model.cst import CST, CSTConfig


def _batches(n_channels: int, seed: int):
    rng = np.random.default_rng(seed)
    ctx_parts, qry_parts = [], []
    for _ in range(3):
        t = np.repeat(np.arange(8.0), n_channels)
        ids = np.tile(np.arange(n_channels), 8)
        v = np.sin(t / 3 + ids)[:, None]
        part = {
            "coords": np.column_stack([t, np.zeros((t.size, 2))]).astype(np.float32),
            "values": v.astype(np.float32),
            "ids": ids,
            "value_mask": np.ones_like(v, bool),
        }
        tq = rng.uniform(0.5, 6.5, 40)
        iq = rng.integers(0, n_channels, 40)
        vq = np.sin(tq / 3 + iq)[:, None]
        query = {
            "coords": np.column_stack([tq, np.zeros((40, 2))]).astype(np.float32),
            "values": vq.astype(np.float32),
            "ids": iq,
            "value_mask": np.ones_like(vq, bool),
        }
        ctx_parts.append(part)
        qry_parts.append(query)
    return [
        (pad_tokens([c], 1), pad_tokens([q], 1)) for c, q in zip(ctx_parts, qry_parts, strict=True)
    ]


def _predict(model, batches):
    with torch.no_grad():
        return [
            model.decode(model.encode(c.values, c.coords, c.ids, c.mask), q.coords, q.ids)
            for c, q in batches
        ]


def test_a_model_worse_than_linear_falls_back_to_it() -> None:
    torch.manual_seed(0)
    model = CST(
        CSTConfig(
            d_model=8,
            n_heads=2,
            n_layers=1,
            d_ff=8,
            n_ids=4,
            window=8,
            n_latent_times=4,
            interpolant="linear",
        )
    ).eval()
    torch.nn.init.constant_(model.head.bias, 3.0)  # a constant error on every query
    batches = _batches(4, seed=0)
    summary = choose_blend(model, batches, _predict)
    assert summary is not None and summary.reduced == 4
    assert (model.channel_blend < 0.05).all()
    assert summary.blended <= summary.linear + 1e-9 < summary.model
    # with the blend, predictions are (nearly) the linear interpolant
    model.channel_blend.zero_()
    linear = _predict(model, batches)
    summary_again = choose_blend(model, batches, _predict)
    assert summary_again.linear_only == 4
    for a, b in zip(_predict(model, batches), linear, strict=True):
        torch.testing.assert_close(a, b, atol=0.2, rtol=0)


def test_the_blended_error_is_never_above_the_better_of_model_and_linear() -> None:
    for seed in range(5):
        torch.manual_seed(seed)
        model = CST(
            CSTConfig(
                d_model=8,
                n_heads=2,
                n_layers=1,
                d_ff=8,
                n_ids=4,
                window=8,
                n_latent_times=4,
                interpolant="linear",
            )
        ).eval()
        summary = choose_blend(model, _batches(4, seed), _predict)
        assert summary.blended <= min(summary.model, summary.linear) * (1 + 0.05) + 1e-9
