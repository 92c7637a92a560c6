"""A small simulated recording with its clean truth, shared by the evaluation tests."""

from __future__ import annotations

from typing import Any

import pytest
import xarray as xr

# a tiny model and a few steps: the tests check plumbing and leakage, not accuracy
TINY_FIT: dict[str, Any] = {
    "steps_per_epoch": 3,
    "max_epochs": 2,
    "batch_size": 2,
    "n_collocation": 16,
    "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "n_fourier": 8},
}


@pytest.fixture
def tiny_fit() -> dict[str, Any]:
    return dict(TINY_FIT)


@pytest.fixture(autouse=True)
def single_threaded(one_thread: None) -> None:
    """Every evaluation test runs on one torch thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="package")
def simulated() -> xr.Dataset:
    """12 ROIs × 480 frames at 30 Hz with ``clean_dff``, the simulator's exact ΔF/F."""
    from cst_neuro.preprocess import compute_dff
    from cst_neuro.simulate import SimulationConfig, simulate

    sim = simulate(SimulationConfig(n_rois=12, n_frames=480, fs=30.0, seed=2))
    ds = compute_dff(sim.recording()).load()
    ds["clean_dff"] = (("time", "roi"), sim.clean_dff(ds["time"].values))
    return ds
