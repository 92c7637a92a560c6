"""The CST model's three modes as evaluation methods: fit on observed samples, then query.

A model is trained with ``cst_neuro.train.fit`` on a Recording holding only the observed
samples of the training segments (``masked_recording``): hidden samples and every sample
of the validation and test segments are absent tokens, so the model never sees them, and
its normalisation comes from the training segments only. It is then bound
(``Reconstructor``) to a Recording of all observed samples (the inputs at test time) and
queried at the hidden samples' real-valued times.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cst_neuro.evaluate.recording import Traces, masked_recording
from cst_neuro.evaluate.tasks import Split

MODEL_METHODS = ("cst", "transformer", "paper")
WINDOW = 32  # FitConfig's default window, shortened for very short recordings


@dataclass
class FittedModel:
    """A trained model bound to the observed inputs; ``predict`` answers at any times."""

    mode: str
    reconstructor: Any  # cst_neuro.reconstruct.Reconstructor
    model: Any
    meta: dict[str, Any]
    fit_seconds: float
    epochs: int
    stopped: str

    def predict(self, times: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        """(T, C) predictions in the recording's units at absolute times (seconds)."""
        return self.reconstructor.predict(times, channels)[..., 0].astype(np.float64)

    def forecaster(self, inputs: Any) -> Any:
        """The same model bound to another Recording (e.g. one cut at a forecast origin)."""
        from cst_neuro.reconstruct import Reconstructor

        return Reconstructor(self.model, self.meta, inputs)


def fit_config(
    mode: str, seed: int, minutes: float, n_frames: int, settings: Mapping[str, Any] | None = None
) -> Any:
    """fit's defaults (or ``settings``) with the time budget; short epochs for the paper mode.

    The paper mode attends over all tokens jointly with a hand-written kernel and double
    backward (about 100× the cost of a cst step), so its epochs are shortened to 10 steps
    and its windows to 1,024 tokens unless ``settings`` say otherwise, or not one epoch
    would end within a budget. The window is cut to the recording's length.
    """
    from cst_neuro.train import FitConfig

    raw: dict[str, Any] = {"steps_per_epoch": 10, "max_tokens": 1024} if mode == "paper" else {}
    raw.update(settings or {})
    raw["window"] = min(int(raw.get("window", WINDOW)), n_frames)
    raw.update(mode=mode, seed=seed, max_minutes=minutes)
    return FitConfig.from_dict(raw, source="evaluation settings")


def fit_model(
    traces: Traces,
    split: Split,
    mode: str,
    seed: int,
    minutes: float,
    settings: Mapping[str, Any] | None = None,
) -> FittedModel:
    """Train ``mode`` on the training segments' observed samples; bind it to all observed."""
    from cst_neuro.reconstruct import Reconstructor
    from cst_neuro.train import fit, load_model

    finite = np.isfinite(traces.values)
    train_ds = masked_recording(traces, split.train_observed & finite, stride=split.stride)
    inputs = masked_recording(traces, split.observed & finite, stride=split.stride)
    config = fit_config(mode, seed, minutes, train_ds.sizes["time"], settings)
    with tempfile.TemporaryDirectory(prefix="cst-eval-") as tmp:
        path = Path(tmp) / f"{mode}.pt"
        start = time.perf_counter()
        result = fit(train_ds, path, config=config)
        seconds = time.perf_counter() - start
        model, meta = load_model(path)
    return FittedModel(
        mode=mode,
        reconstructor=Reconstructor(model, meta, inputs),
        model=model,
        meta=meta,
        fit_seconds=seconds,
        epochs=result.epochs,
        stopped=result.stopped,
    )
