"""Fixed validation windows for pretraining, scored against linear interpolation.

The windows come from the corpus's own stream of the seed (never a training batch), and the
linear interpolant of each query's channel over the same context samples is computed once:
a prior is judged by how its error compares with what a user already has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cst_neuro.data import Tokens
from cst_neuro.model.modes import get_mode
from cst_neuro.pretrain.corpus import Source

if TYPE_CHECKING:
    from cst_neuro.pretrain.loop import PretrainConfig

BATCH = 16  # validation windows per forward pass


def linear_predictions(ctx: Tokens, qry: Tokens) -> np.ndarray:
    """(B, Q) linear interpolation in time of each query's channel over the context samples
    (held at the ends, 0 for a channel with none), as `model.interpolant` computes it."""
    out = np.zeros(qry.ids.shape, np.float64)
    for b in range(ctx.ids.shape[0]):
        real = ctx.mask[b].numpy()
        ids, t = ctx.ids[b].numpy()[real], ctx.coords[b, :, 0].numpy()[real]
        v = ctx.values[b, :, 0].numpy()[real]
        q_real = qry.mask[b].numpy()
        for c in np.unique(qry.ids[b].numpy()[q_real]):
            own = ids == c
            rows = np.flatnonzero(q_real & (qry.ids[b].numpy() == c))
            if own.any():
                order = np.argsort(t[own])
                out[b, rows] = np.interp(
                    qry.coords[b, rows, 0].numpy(), t[own][order], v[own][order]
                )
    return out


@dataclass
class ValidationSet:
    batches: list[tuple[Tokens, Tokens, np.ndarray]]  # context, queries, linear predictions

    @classmethod
    def build(cls, config: PretrainConfig, sources: list[Source]) -> ValidationSet:
        from cst_neuro.pretrain.loop import VALIDATION_SEED, corpus_for

        corpus = corpus_for(config, sources, np.random.default_rng([config.seed, VALIDATION_SEED]))
        batches = []
        for start in range(0, config.n_validation, BATCH):
            ctx, qry = corpus.batch(min(BATCH, config.n_validation - start))
            batches.append((ctx, qry, linear_predictions(ctx, qry)))
        return cls(batches)

    @torch.no_grad()
    def score(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """MSE of the model and of linear interpolation, and their ratio (normalised units)."""
        mode = get_mode("cst")
        was_training = model.training
        model.eval()
        err_model = err_linear = count = 0.0
        for ctx, qry, linear in self.batches:
            pred = (
                mode.predict(
                    model,
                    mode.context(model, ctx.to(device)),
                    *(t.to(device) for t in (qry.coords, qry.ids)),
                )[..., 0]
                .float()
                .cpu()
                .numpy()
            )
            real = qry.mask.numpy()
            target = qry.values[..., 0].numpy()
            err_model += float(((pred - target) ** 2)[real].sum())
            err_linear += float(((linear - target) ** 2)[real].sum())
            count += float(real.sum())
        model.train(was_training)
        mse, lin = err_model / max(count, 1.0), err_linear / max(count, 1.0)
        return {"val_mse": mse, "linear_mse": lin, "ratio": mse / max(lin, 1e-12)}
