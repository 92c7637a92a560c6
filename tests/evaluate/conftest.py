"""A small simulated recording with its clean truth, shared by the evaluation tests."""

from __future__ import annotations

from typing import Any

import pytest
import xarray as xr


@pytest.fixture
def tiny_fit(tiny_model: dict[str, int]) -> dict[str, Any]:
    """A tiny model and a few steps: the tests check plumbing and leakage, not accuracy."""
    return {"steps_per_epoch": 3, "max_epochs": 2, "batch_size": 2, "n_collocation": 16,
            "prior": "none", "model": tiny_model}  # fmt: skip


@pytest.fixture(autouse=True)
def single_threaded(one_thread: None) -> None:
    """Every evaluation test runs on one torch thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="package")
def simulated(simulate_recording: Any) -> xr.Dataset:
    """12 ROIs × 480 frames at 30 Hz with ``clean_dff``, the simulator's exact ΔF/F."""
    sim, ds = simulate_recording(12, 480, fs=30.0, seed=2)
    ds = ds.copy()
    ds["clean_dff"] = (("time", "roi"), sim.clean_dff(ds["time"].values))
    return ds
