"""Hostile inputs, second round (issue 16): one test per class of failure found.

Each case must end as the contract says (one ``error: FILE: problem`` line, exit 2,
nothing left behind, nothing run) or, where the input is usable, succeed with data that
says what it holds: no silent NaN, no store that disagrees with itself, no lost files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cst_neuro.batch.runner import recording_names
from cst_neuro.simulate import SimulationConfig, simulate, write_suite2p
from cst_neuro.store import open_store

from ._inputs import assert_clean_cli_error, cli, cli_command, cli_env, write_nwb

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def suite2p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated Suite2p folder (copy it before damaging it)."""
    sim = simulate(SimulationConfig(n_rois=6, n_frames=120, fov=(48, 48), seed=3))
    return write_suite2p(sim, tmp_path_factory.mktemp("s2p") / "suite2p", layout="v0")


def _copy(folder: Path, where: Path) -> Path:
    return Path(shutil.copytree(folder, where / folder.name))


# --- 1, 2: valid is what a model reads ----------------------------------------------------


def test_all_nan_recording_claims_no_valid_frame(
    suite2p: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _copy(suite2p, tmp_path)
    F = np.load(folder / "plane0" / "F.npy")
    np.save(folder / "plane0" / "F.npy", np.full_like(F, np.nan))
    code, _, err = cli("ingest", folder, "-o", tmp_path / "rec.zarr")
    assert code == 0, err
    assert "none of its 120 frames is valid" in caplog.text
    assert not open_store(tmp_path / "rec.zarr")["valid"].values.any()
    code, out, _ = cli("info", tmp_path / "rec.zarr")
    assert code == 0 and "valid:     0/120 frames complete" in out
    assert "no frame has data a model can read" in out


def test_frames_with_nan_neuropil_are_not_valid(suite2p: Path, tmp_path: Path) -> None:
    folder = _copy(suite2p, tmp_path)
    Fneu = np.load(folder / "plane0" / "Fneu.npy")
    Fneu[:, 7] = np.nan  # (roi, time): frame 7 of every ROI
    np.save(folder / "plane0" / "Fneu.npy", Fneu)
    code, _, err = cli("ingest", folder, "-o", tmp_path / "rec.zarr")
    assert code == 0, err
    ds = open_store(tmp_path / "rec.zarr")
    assert np.isnan(ds["dff"].values[7]).all() and not ds["valid"].values[7]
    assert ds["valid"].values.sum() == 119


# --- 3, 6: footprints and rates that cannot be stored faithfully ---------------------------


@pytest.mark.parametrize(
    ("mask", "problem"),
    [
        (lambda i: [(4_000_000_000, i, 1.0)], "x coordinate 4000000000 of ROI"),
        (lambda i: [(i, i, float("nan"))], "footprint weights are NaN, inf"),
    ],
)
def test_nwb_footprints_that_would_be_stored_wrong(tmp_path: Path, mask, problem) -> None:
    valid = write_nwb(tmp_path, np.random.default_rng(0), mask)
    code, out, err = cli("ingest", valid.path, "-o", tmp_path / "rec.zarr")
    assert problem in assert_clean_cli_error(code, out, err, "rec.nwb")
    assert not (tmp_path / "rec.zarr").exists()


def test_a_plane_with_a_negative_rate_is_not_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = simulate(SimulationConfig(n_rois=6, n_frames=60, n_planes=2, fov=(48, 48), seed=1))
    folder = write_suite2p(sim, tmp_path / "suite2p", layout="v0")
    ops = np.load(folder / "plane1" / "ops.npy", allow_pickle=True).item()
    np.save(folder / "plane1" / "ops.npy", np.array({**ops, "fs": -30.0}, dtype=object))
    code, out, err = cli("ingest", folder, "-o", tmp_path / "rec.zarr")
    line = assert_clean_cli_error(code, out, err, "plane1/ops.npy")
    assert "must be a positive number of Hz, got -30.0" in line
    code, _, err = cli("ingest", folder, "-o", tmp_path / "rec.zarr", "--fs", "30")
    assert code == 0, err
    assert "--fs 30 Hz overrides fs = -30.0" in caplog.text


def test_fs_that_contradicts_the_timestamps(tmp_path: Path) -> None:
    t = np.arange(50) / 30.0
    np.savez(tmp_path / "r.npz", dff=np.zeros((50, 3), np.float32), t=t)
    code, out, err = cli("ingest", tmp_path / "r.npz", "-o", tmp_path / "rec.zarr", "--fs", "10")
    line = assert_clean_cli_error(code, out, err, "r.npz")
    assert "--fs 10 Hz contradicts the file's timestamps (30 Hz)" in line
    assert not (tmp_path / "rec.zarr").exists()


# --- 5: absurd sizes are refused before anything is allocated ------------------------------


@pytest.mark.parametrize("fs", ["1e12", "1e308", "inf"])
def test_absurd_rates(suite2p: Path, tmp_path: Path, fs: str) -> None:
    code, out, err = cli("ingest", suite2p, "-o", tmp_path / "rec.zarr", "--fs", fs)
    assert_clean_cli_error(code, out, err, "fs")
    assert not (tmp_path / "rec.zarr").exists()


def test_an_upsampling_factor_beyond_the_recording(suite2p: Path, tmp_path: Path) -> None:
    assert cli("ingest", suite2p, "-o", tmp_path / "rec.zarr")[0] == 0
    code, out, err = cli(
        "evaluate", tmp_path / "rec.zarr", "-o", tmp_path / "report", "--factor", "100000"
    )
    line = assert_clean_cli_error(code, out, err, "factor 100000 is too large for 120 frames")
    assert "at most 6" in line and not (tmp_path / "report").exists()


# --- 7: batch names and folders -------------------------------------------------------------


def test_names_that_collide_after_sanitising_are_told_apart() -> None:
    names = recording_names(["/d/a b", "/d/a_b", "/d/ré", "/d/rë"])
    assert len(set(names)) == 4 and names[0].startswith("a_b-") and names[2].startswith("r-")
    assert names == recording_names(["/d/a b", "/d/a_b", "/d/ré", "/d/rë"])  # stable
    own = recording_names(["/x/summary.csv.npy", "/x/manifest.json.h5", "/x/.batch.lock", "/x/.h"])
    assert own == ["summary.csv_recording", "manifest.json_recording", "batch", "h"]


def test_batch_of_look_alike_and_reserved_names(suite2p: Path, tmp_path: Path) -> None:
    inputs = [shutil.copytree(suite2p, tmp_path / d) for d in ("a b", "a_b", "summary.md.x")]
    out = tmp_path / "out"
    code, _, err = cli("batch", *inputs, "-o", out, "--steps", "ingest", "--workers", "1")
    assert code == 0, err
    assert (out / "summary.md").is_file() and (out / "summary.csv").is_file()
    stores = sorted(p.parent.name for p in out.glob("*/recording.zarr"))
    assert len(stores) == 3 and "summary.md_recording" in stores
    assert sum(name.startswith("a_b-") for name in stores) == 2


def test_batch_output_may_not_be_an_input(suite2p: Path, tmp_path: Path) -> None:
    folder = _copy(suite2p, tmp_path)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    for outdir in (folder, folder / "plane0", tmp_path):
        code, out, err = cli("batch", folder, "-o", outdir, "--steps", "ingest")
        assert_clean_cli_error(code, out, err, "input")
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


# --- 8: --overwrite replaces only what the command itself writes ----------------------------


def test_simulate_overwrite_keeps_a_real_suite2p_folder(suite2p: Path, tmp_path: Path) -> None:
    real = _copy(suite2p, tmp_path)
    (real / ".cst-neuro-simulation").unlink()  # as Suite2p wrote it: not a simulation
    code, out, err = cli("simulate", "-o", real, "--overwrite", "--rois", "3", "--frames", "20")
    assert "not a Suite2p folder simulated by cst-neuro" in assert_clean_cli_error(
        code, out, err, "suite2p"
    )
    assert (real / "plane0" / "F.npy").is_file()
    sim = tmp_path / "sim"
    for _ in range(2):  # a simulation replaces its own earlier output
        assert cli("simulate", "-o", sim, "--overwrite", "--rois", "3", "--frames", "20")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim", "suite2p"]


def test_fit_overwrite_replaces_only_a_checkpoint(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    store = tmp_path / "rec.zarr"
    assert cli("simulate", "-o", store, "--layout", "zarr", "--rois", "3", "--frames", "40")[0] == 0
    code, out, err = cli("fit", store, "-o", notes, "--overwrite", "--max-epochs", "0")
    assert "not a checkpoint written by cst-neuro" in assert_clean_cli_error(
        code, out, err, "notes.txt"
    )
    assert notes.read_text() == "mine"


def test_overwrite_through_a_link_leaves_nothing_behind(suite2p: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "rec.zarr"
    assert cli("ingest", suite2p, "-o", target)[0] == 0
    link = tmp_path / "link.zarr"
    link.symlink_to(target)
    code, _, err = cli("ingest", suite2p, "-o", link, "--overwrite", "--baseline", "none")
    assert code == 0, err
    assert link.is_symlink() and open_store(link).attrs["dff_method"] == "none"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["rec.zarr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.zarr", "real"]


# --- 10: view without a display --------------------------------------------------------------


def test_view_without_a_display_says_so(suite2p: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    done = subprocess.run(cli_command("view", str(suite2p)), capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    line = assert_clean_cli_error(done.returncode, done.stdout, done.stderr)
    assert "no display is available (DISPLAY is not set)" in line


# --- stores open silently in xarray ------------------------------------------------------------


def test_stores_carry_consolidated_metadata(suite2p: Path, tmp_path: Path) -> None:
    assert cli("ingest", suite2p, "-o", tmp_path / "rec.zarr")[0] == 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the RuntimeWarning about consolidated metadata
        ds = xr.open_zarr(tmp_path / "rec.zarr")
    assert "dff" in ds and os.path.isfile(tmp_path / "rec.zarr" / "zarr.json")
