"""``cst-neuro demo``: the pipeline end to end on a simulated recording, scored against truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cst_neuro._cli.app import app
from cst_neuro.demo import DemoConfig, DemoResult, run_demo, score_against_truth
from cst_neuro.errors import OutputError
from cst_neuro.evaluate.metrics import affine_to
from cst_neuro.schema import new_recording
from cst_neuro.simulate import SimulationConfig, simulate
from cst_neuro.store import open_store, write_recording

TINY = DemoConfig(
    n_rois=12, n_frames=240, seed=3, fit_minutes=1.0,
    fit={"max_epochs": 1, "steps_per_epoch": 2},
)  # fmt: skip
METHODS = ["cst", "linear", "pchip", "low-rank + linear"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run_demo(tmp_path_factory.mktemp("demo"), config=TINY)


def test_demo_writes_every_result_and_scores_every_method(demo: DemoResult) -> None:
    for path in demo.paths.values():
        assert path.exists() and path.is_relative_to(demo.outdir)
    assert demo.paths["figure"].stat().st_size > 10_000
    assert [s["method"] for s in demo.scores] == METHODS
    for s in demo.scores:
        assert 0 < s["nmse_between_frames"] < 10 and -1 <= s["r_between_frames"] <= 1
    rec = open_store(demo.paths["reconstruction x4 (zarr)"])
    assert rec.sizes["time"] == (TINY.n_frames - 1) * 4 + 1
    csv = demo.paths["scores"].read_text().splitlines()
    assert csv[0] == "method,nmse_between_frames,nmse_at_frames,r_between_frames"
    assert len(csv) == 1 + len(METHODS)


def test_a_perfect_reconstruction_scores_zero(demo: DemoResult, tmp_path: Path) -> None:
    """The truth, put in measured units the way the scorer does, has NMSE 0 and r 1."""
    sim = simulate(SimulationConfig(n_rois=TINY.n_rois, n_frames=TINY.n_frames, seed=TINY.seed))
    store = demo.paths["recording (zarr)"]
    ds = open_store(store)
    rois = ds["roi"].values
    times = ds["time"].values[0] + np.arange((ds.sizes["time"] - 1) * 4 + 1) / (4 * TINY.fs)
    clean = np.vstack([sim.clean_dff_frames()[:, rois], sim.clean_dff(times, roi=rois)])
    noisy = np.vstack([ds["dff"].values, np.full((times.size, rois.size), np.nan)])
    rows = np.zeros(clean.shape, bool)
    rows[: ds.sizes["time"]] = True
    perfect = affine_to(clean, noisy, rows)[ds.sizes["time"] :].astype(np.float32)
    rec = new_recording(
        {"dff": (("time", "roi"), perfect)}, time=times, fs=4 * TINY.fs,
        source_format="cst-reconstruction", source_name="perfect", coords={"roi": rois},
        attrs={"upsample": 4},
    )  # fmt: skip
    path = write_recording(rec, tmp_path / "perfect.zarr")
    scores, example = score_against_truth(sim, store, path)
    cst = scores[0]
    assert cst["method"] == "cst"
    assert cst["nmse_between_frames"] < 1e-8 and cst["nmse_at_frames"] < 1e-8
    assert cst["r_between_frames"] > 0.999999
    assert all(s["nmse_between_frames"] > 1e-3 for s in scores[1:])  # the baselines are not
    assert example["roi"] in rois


def test_demo_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="is not empty; pass --overwrite"):
        run_demo(tmp_path, config=TINY)
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path}: is not empty; pass --overwrite to replace the demo's files"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_demo_overwrite_replaces_only_an_earlier_demo(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not the folder of a cst-neuro demo; not replacing"):
        run_demo(tmp_path, config=TINY, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
