"""On a CUDA GPU (skipped elsewhere; `benchmarks/bench_gpu.py` runs these first): fit and
reconstruct on the GPU, bf16 autocast, predictions that agree with the CPU's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cst_neuro.checkpoint import load_model
from cst_neuro.reconstruct import Reconstructor
from cst_neuro.simulate import SimulationConfig, simulate
from cst_neuro.train import FitConfig, fit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def recording():
    from cst_neuro.preprocess import compute_dff

    sim = simulate(SimulationConfig(n_rois=20, n_frames=600, fs=30.0, seed=1))
    return compute_dff(sim.recording()).load()


def test_fit_and_reconstruct_on_the_gpu_agree_with_the_cpu(recording, tmp_path: Path) -> None:
    result = fit(recording, tmp_path / "m.pt", config=FitConfig(max_epochs=2), device="cuda")
    assert result.epochs == 2 and np.isfinite(result.best_val)
    model, checkpoint = load_model(tmp_path / "m.pt")
    times = recording["time"].values[100:140:3] + 0.01
    on_gpu = Reconstructor(model, checkpoint, recording, device="cuda").predict(times)
    on_cpu = Reconstructor(model, checkpoint, recording, precision="fp32").predict(times)
    scale = np.nanstd(recording["dff"].values)
    assert np.abs(on_gpu - on_cpu).max() < 0.05 * scale  # bf16 on the GPU, fp32 on the CPU
