"""Never much worse than linear interpolation: a fitted model's per-channel blend with it.

After training, `fit` predicts its validation frames twice, with the model (ŷ) and with
the model's own linear interpolant of the same context (I), and gives each channel the
weight α_c ∈ [0, 1] of I + α_c (ŷ - I) that fits the validation samples best (least
squares, closed form). A channel with few validation samples is pulled towards the weight
of all channels pooled (as if `PRIOR_SAMPLES` more samples agreed with the pool). A channel
on which the model does worse than linear interpolation is thereby moved towards it, or
onto it (α = 0); the checkpoint records how many were, and the fit summary says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cst_neuro.data import Tokens
from cst_neuro.model.cst import CST

PRIOR_SAMPLES = 16.0  # validation samples a channel needs to weigh as much as the pool


@dataclass(frozen=True)
class BlendSummary:
    """Validation MSE (normalised units) of the blended model, the raw model and linear."""

    blended: float
    model: float
    linear: float
    channels: int
    reduced: int  # channels with α < 0.99
    linear_only: int  # channels with α < 0.01
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def line(self) -> str:
        """One line for the fit summary."""
        if self.samples == 0:
            return "no validation samples: the model is not compared with linear interpolation"
        ratio = self.blended / self.linear if self.linear > 0 else float("nan")
        text = (
            f"validation MSE {self.blended:.4g} vs linear interpolation {self.linear:.4g} "
            f"({ratio:.3f}x)"
        )
        if self.reduced:
            text += (
                f"; the model's correction to it reduced where it did not help: on "
                f"{self.reduced} of {self.channels} channels ({self.linear_only} left linear)"
            )
        return text


def choose_blend(
    model: CST, batches: list[tuple[Tokens, Tokens]], predict: Any
) -> BlendSummary | None:
    """Set ``model.channel_blend`` from validation ``batches``; ``predict(model, batches)``
    returns each batch's predictions (1, Q, V). None when the model has no blend."""
    blend = model.channel_blend
    if blend is None:
        return None
    with torch.no_grad():
        blend.fill_(1.0)
        full = predict(model, batches)
        blend.fill_(0.0)
        base = predict(model, batches)
    n_channels = blend.shape[0]
    num, den, count = (np.zeros(n_channels) for _ in range(3))
    err_model = err_linear = 0.0
    for p, b, (_, qry) in zip(full, base, batches, strict=True):
        ok = qry.value_mask[0].numpy()  # (Q, V)
        ids = np.broadcast_to(qry.ids[0].numpy()[:, None], ok.shape)[ok]
        y, p_, b_ = (t[0].cpu().numpy()[ok].astype(np.float64) for t in (qry.values, p, b))
        np.add.at(num, ids, (p_ - b_) * (y - b_))
        np.add.at(den, ids, (p_ - b_) ** 2)
        np.add.at(count, ids, 1.0)
        err_model += float(((p_ - y) ** 2).sum())
        err_linear += float(((b_ - y) ** 2).sum())
    pooled = float(np.clip(num.sum() / den.sum(), 0.0, 1.0)) if den.sum() > 0 else 1.0
    weight = PRIOR_SAMPLES * den / np.maximum(count, 1.0)  # the pool as PRIOR_SAMPLES samples
    alpha = np.where(
        den + weight > 0, (num + weight * pooled) / np.maximum(den + weight, 1e-300), pooled
    )
    alpha = np.clip(alpha, 0.0, 1.0)
    with torch.no_grad():
        blend.copy_(torch.as_tensor(alpha, dtype=blend.dtype)[:, None].expand_as(blend))
    n = int(count.sum())
    # the blended error, from the same sums: Σ(b + α(p - b) - y)² = lin - 2αΣ.. + α²Σ..
    blended = err_linear - 2 * float((alpha * num).sum()) + float((alpha**2 * den).sum())
    return BlendSummary(
        blended=blended / max(n, 1),
        model=err_model / max(n, 1),
        linear=err_linear / max(n, 1),
        channels=n_channels,
        reduced=int((alpha < 0.99).sum()),
        linear_only=int((alpha < 0.01).sum()),
        samples=n,
    )
