"""``ingest --run-suite2p``: Suite2p itself on a raw movie (opt-in: ``pytest -m suite2p``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cst_neuro._cli.app import app
from cst_neuro.simulate import SimulationConfig, simulate, write_tiff

runner = CliRunner()
HAS_SUITE2P = importlib.util.find_spec("suite2p") is not None


@pytest.fixture
def movie(tmp_path: Path) -> Path:
    sim = simulate(SimulationConfig(n_rois=20, n_frames=300, fs=30.0, fov=(96, 96), seed=2))
    return write_tiff(sim, tmp_path / "movie.tif")


@pytest.mark.skipif(HAS_SUITE2P, reason="checks the message shown when Suite2p is missing")
def test_missing_suite2p_is_a_clear_error(movie: Path, tmp_path: Path) -> None:
    args = ["ingest", str(movie), "-o", str(tmp_path / "o.zarr"), "--run-suite2p", "--fs", "30"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "Suite2p is not installed; pip install 'cst-neuro[suite2p]'" in result.stderr


def test_run_suite2p_needs_the_frame_rate(movie: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["ingest", str(movie), "-o", str(tmp_path / "o.zarr"), "--run-suite2p"]
    )
    assert result.exit_code == 2 and "pass --fs HZ" in result.stderr


@pytest.mark.suite2p
@pytest.mark.skipif(not HAS_SUITE2P, reason="needs the optional 'suite2p' extra")
def test_run_suite2p_then_ingest(movie: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec.zarr"
    args = ["ingest", str(movie), "-o", str(out), "--run-suite2p", "--fs", "30", "--all-rois"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from cst_neuro.store import open_store

    ds = open_store(out)
    assert ds.attrs["source_format"] == "suite2p" and ds.sizes["time"] == 300
