"""The CST model's modes as evaluation methods: fit on observed samples, then query.

Besides the modes themselves (``cst`` starts from the calcium prior and fine-tunes, as
`fit` does by default), two variants of ``cst`` isolate what the prior brings, with the
same budget: ``cst-zero-shot`` (the prior bound to the recording, no training) and
``cst-scratch`` (``prior = none``).

A model is trained with ``cst_neuro.train.fit`` on a Recording holding only the observed
samples of the training segments (``masked_recording``): hidden samples and every sample
of the validation and test segments are absent tokens, so the model never sees them, and
its normalisation comes from the training segments only. It is then bound
(``Reconstructor``) to a Recording of all observed samples (the inputs at test time) and
queried at the hidden samples' real-valued times.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cst_neuro.evaluate.recording import Traces, masked_recording
from cst_neuro.evaluate.tasks import Split
from cst_neuro.model.modes import MODES

log = logging.getLogger(__name__)

# method: (mode, fit settings it implies)
MODEL_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    **{mode: (mode, {}) for mode in MODES},
    "cst-zero-shot": ("cst", {"max_epochs": 0}),
    "cst-scratch": ("cst", {"prior": "none"}),
}
DEFAULT_MODEL_METHODS = tuple(MODES)  # what `evaluate` runs when no methods are named


def trains(method: str) -> bool:
    """Whether a model method trains (and so takes a share of the time budget)."""
    return MODEL_METHODS[method][1].get("max_epochs") != 0


WINDOW = 32  # FitConfig's default window, shortened for very short recordings


@dataclass
class FittedModel:
    """A trained model bound to the observed inputs; ``predict`` answers at any times."""

    mode: str
    reconstructor: Any  # cst_neuro.reconstruct.Reconstructor
    model: Any
    checkpoint: Any  # cst_neuro.checkpoint.Checkpoint
    fit_seconds: float
    epochs: int
    stopped: str

    def predict(self, times: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        """(T, C) predictions in the recording's units at absolute times (seconds)."""
        return self.reconstructor.predict(times, channels)[..., 0].astype(np.float64)

    def forecaster(self, inputs: Any) -> Any:
        """The same model bound to another Recording (e.g. one cut at a forecast origin)."""
        from cst_neuro.reconstruct import Reconstructor

        return Reconstructor(self.model, self.checkpoint, inputs)


def fit_config(
    mode: str, seed: int, minutes: float, n_frames: int, settings: Mapping[str, Any] | None = None
) -> Any:
    """fit's defaults (or ``settings``) with the time budget and the mode's `budget_settings`.

    One ``[model]`` table serves every mode evaluated: each mode takes the network settings
    its architecture has (the others are logged). The window is cut to the recording's
    length.
    """
    from cst_neuro.fit_config import FitConfig
    from cst_neuro.model.modes import config_fields, get_mode

    raw: dict[str, Any] = {**get_mode(mode).budget_settings, **(settings or {})}
    network = dict(raw.get("model", {}))
    ignored = sorted(set(network) - config_fields(mode))
    if ignored:
        log.info("mode %s has no network setting(s) %s: not applied", mode, ", ".join(ignored))
        raw["model"] = {k: v for k, v in network.items() if k not in ignored}
    raw["window"] = min(int(raw.get("window", WINDOW)), n_frames)
    raw.update(mode=mode, seed=seed, max_minutes=minutes)
    return FitConfig.from_dict(raw, source="evaluation settings")


def fit_model(
    traces: Traces,
    split: Split,
    method: str,
    seed: int,
    minutes: float,
    settings: Mapping[str, Any] | None = None,
) -> FittedModel:
    """Train ``method`` on the training segments' observed samples; bind it to all observed."""
    from cst_neuro.checkpoint import load_model
    from cst_neuro.reconstruct import Reconstructor
    from cst_neuro.train import fit

    finite = np.isfinite(traces.values)
    train_ds = masked_recording(traces, split.train_observed & finite, stride=split.stride)
    inputs = masked_recording(traces, split.observed & finite, stride=split.stride)
    mode, implied = MODEL_METHODS[method]
    config = fit_config(
        mode, seed, minutes, train_ds.sizes["time"], {**(settings or {}), **implied}
    )
    with tempfile.TemporaryDirectory(prefix="cst-eval-") as tmp:
        path = Path(tmp) / f"{method}.pt"
        start = time.perf_counter()
        result = fit(train_ds, path, config=config)
        seconds = time.perf_counter() - start
        model, checkpoint = load_model(path)
    return FittedModel(
        mode=method,
        reconstructor=Reconstructor(model, checkpoint, inputs),
        model=model,
        checkpoint=checkpoint,
        fit_seconds=seconds,
        epochs=result.epochs,
        stopped=result.stopped,
    )
