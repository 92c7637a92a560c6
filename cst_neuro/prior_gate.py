"""Keep the prior unless fine-tuning beats it by more than the validation frames' noise.

Early stopping picks the fine-tuned epoch with the lowest validation error, and the
minimum of a few dozen noisy scores is optimistic: on a single cell (a few hundred
validation samples) an epoch 1% "better" than the prior can be 25% worse on frames no
choice saw. The prior was made on a large corpus and is the safer default, so `fit`
keeps the fine-tuned weights only when their gain over the prior on the validation frames
exceeds ``Z`` standard errors of the paired difference. Frames are the units of that
error (the samples of one frame share its noise and its context), so a population's many
channels do not pass for many independent samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cst_neuro.data import Tokens

Z = 2.0  # standard errors the fine-tuned gain must exceed (one-sided, about 2%)


@dataclass(frozen=True)
class Gain:
    """Validation MSE of the prior and of the fine-tuned weights, with the standard error
    of their difference (frames as the units)."""

    prior: float
    tuned: float
    stderr: float
    frames: int

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**self.__dict__, "significant": self.significant}

    @property
    def significant(self) -> bool:
        """Whether fine-tuning beat the prior by more than ``Z`` standard errors."""
        return self.prior - self.tuned > Z * self.stderr

    def line(self) -> str:
        """One line for the log and the fit summary."""
        return (
            f"fine-tuning's validation MSE {self.tuned:.4g} against the prior's "
            f"{self.prior:.4g} (difference {self.prior - self.tuned:+.3g}, standard error "
            f"{self.stderr:.2g} over {self.frames} frames)"
        )


def frame_errors(
    predictions: Sequence[torch.Tensor], batches: Sequence[tuple[Tokens, Tokens]]
) -> tuple[np.ndarray, np.ndarray]:
    """Summed squared error and sample count of each validation frame, in a fixed order
    (the same batches give the same frames)."""
    sums, counts = [], []
    for pred, (_, qry) in zip(predictions, batches, strict=True):
        ok = qry.value_mask.cpu().numpy()  # (B, Q, V)
        err = ((pred.cpu().double() - qry.values.double()) ** 2).numpy()
        frame = np.broadcast_to(qry.coords[..., :1].cpu().numpy(), ok.shape)
        row = np.broadcast_to(np.arange(ok.shape[0])[:, None, None], ok.shape)
        keys = np.stack([row[ok], frame[ok]], axis=1)
        _, which = np.unique(keys, axis=0, return_inverse=True)
        which = which.ravel()
        sums.append(np.bincount(which, weights=err[ok]))
        counts.append(np.bincount(which).astype(float))
    if not sums:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(sums), np.concatenate(counts)


def compare(prior: tuple[np.ndarray, np.ndarray], tuned: tuple[np.ndarray, np.ndarray]) -> Gain:
    """The paired comparison of two models' `frame_errors` on the same frames."""
    (e_prior, counts), (e_tuned, _) = prior, tuned
    n = max(float(counts.sum()), 1.0)
    diff = e_prior - e_tuned
    gain = float(diff.sum()) / n
    frames = int(counts.size)
    spread = float(((diff - gain * counts) ** 2).sum()) * frames / max(frames - 1, 1)
    return Gain(
        prior=float(e_prior.sum()) / n,
        tuned=float(e_tuned.sum()) / n,
        stderr=float(np.sqrt(spread)) / n,
        frames=frames,
    )
