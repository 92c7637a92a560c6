"""Shared fixtures: the real recordings in ../shared/data (skipped when absent), seeding,
simulated recordings and the tiny model every fitting test trains."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests using it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not available: {SHARED_DATA} is absent (a fresh clone)")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator so every test is deterministic."""
    return np.random.default_rng(20230123)


@pytest.fixture
def numeric_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records every positioned read of a lazy NumericFile as (start, stop), in order."""
    from cst_neuro.io import npy

    reads: list[tuple[int, int]] = []
    original = npy.NumericFile.read_rows

    def spy(self: npy.NumericFile, start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return original(self, start, stop)

    monkeypatch.setattr(npy.NumericFile, "read_rows", spy)
    return reads


# a tiny network trained from scratch (prior = "none"): plumbing tests, not accuracy
TINY_MODEL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "n_fourier": 8}


@pytest.fixture(scope="session")
def tiny_model() -> dict[str, int]:
    """CSTConfig overrides of a model that trains in about a second (a fresh copy)."""
    return dict(TINY_MODEL)


@pytest.fixture(scope="session")
def simulate_recording() -> Callable[..., tuple[Any, xr.Dataset]]:
    """``simulate_recording(n_rois, n_frames, dff=True, **config)``: (simulation, Recording).

    The Recording is in memory, with ΔF/F unless ``dff=False``; each distinct call is
    simulated once per session (treat the results as read-only).
    """
    from cst_neuro.preprocess import compute_dff
    from cst_neuro.simulate import SimulationConfig, simulate

    @functools.cache
    def make(n_rois: int, n_frames: int, dff: bool = True, **config: Any) -> tuple[Any, xr.Dataset]:
        sim = simulate(SimulationConfig(n_rois=n_rois, n_frames=n_frames, **config))
        ds = sim.recording()
        return sim, (compute_dff(ds).load() if dff else ds)

    return make


@pytest.fixture(scope="session")
def tiny_fit_config() -> Callable[..., Any]:
    """A factory of FitConfigs whose models train in about a second (overrides as keywords)."""
    from cst_neuro.train import FitConfig

    def make(**overrides: Any) -> FitConfig:
        base = dict(window=16, batch_size=2, steps_per_epoch=2, max_epochs=1, n_collocation=16)
        return FitConfig(**{**base, "prior": "none", "model": TINY_MODEL, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calcium prior pretrained for three steps (seconds): plumbing, not accuracy."""
    from cst_neuro.pretrain import PretrainConfig, pretrain

    path = tmp_path_factory.mktemp("prior") / "p.pt"
    config = PretrainConfig(
        max_steps=3, validate_every=3, n_validation=4, batch_size=2, max_queries=32,
        n_collocation=8, warmup_steps=1,
        model={"d_model": 16, "n_heads": 2, "n_layers": 1, "n_decoder_layers": 1, "d_ff": 16},
    )  # fmt: skip
    pretrain(path, config=config)
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models are fastest on one torch thread (and shared CI cores make more thrash)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
