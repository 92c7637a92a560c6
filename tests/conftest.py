"""Shared fixtures: the real recordings in ../shared/data (skipped when absent) and seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
