"""fit's per-epoch callback: live progress for GUIs, and cancelling keeps the best model."""

from __future__ import annotations

from pathlib import Path

import pytest

from cst_neuro.checkpoint import load_model
from cst_neuro.simulate import SimulationConfig, simulate
from cst_neuro.train import FitConfig, fit, partial_path

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "n_fourier": 8}


@pytest.fixture(scope="module")
def recording():
    from cst_neuro.preprocess import compute_dff

    sim = simulate(SimulationConfig(n_rois=6, n_frames=160, fs=20.0, seed=7))
    return compute_dff(sim.recording()).load()


def config(max_epochs: int) -> FitConfig:
    return FitConfig(window=16, batch_size=2, steps_per_epoch=2, max_epochs=max_epochs,
                     patience=50, n_collocation=16, prior="none", model=TINY)  # fmt: skip


def test_callback_sees_every_epoch(recording, tmp_path: Path) -> None:
    seen = []
    result = fit(recording, tmp_path / "m.pt", config=config(3),
                 callback=lambda epoch, row: seen.append((epoch, dict(row))))  # fmt: skip
    assert result.stopped == "max-epochs"
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert [row for _, row in seen] == result.history


def test_returning_true_cancels_and_keeps_the_best_model(recording, tmp_path: Path) -> None:
    result = fit(recording, tmp_path / "m.pt", config=config(50),
                 callback=lambda epoch, row: epoch >= 2)  # fmt: skip
    assert result.stopped == "cancelled" and result.epochs == 2
    _, checkpoint = load_model(tmp_path / "m.pt")  # a finished, loadable model
    assert checkpoint.best_val == min(row["val"] for row in result.history)
    assert not partial_path(tmp_path / "m.pt").exists()
