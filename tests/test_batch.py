"""``cst-neuro batch``: Dask runs, failure isolation, the manifest and resumption."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cst_neuro._cli.app import app
from cst_neuro.batch import BatchSettings, recording_names
from cst_neuro.batch.manifest import BatchLock, Manifest, hash_input, step_key
from cst_neuro.batch.report import BatchReport, RecordingResult
from cst_neuro.batch.steps import closure
from cst_neuro.errors import InputError, OutputError
from cst_neuro.simulate import SimulationConfig, simulate, write_suite2p

runner = CliRunner()

TINY = """
[ingest]
all_rois = true

[fit]
max_epochs = 1
steps_per_epoch = 2

[evaluate]
methods = ["linear", "pchip"]

[batch]
torch_threads = 1
"""


def run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def summary(outdir: Path) -> dict[str, dict[str, str]]:
    with open(outdir / "summary.csv", newline="") as fh:
        return {row["recording"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A running LocalCluster of two single-threaded worker processes: its address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small simulated Suite2p folders and a third whose F.npy is corrupt."""
    root = tmp_path_factory.mktemp("inputs")
    out = {}
    for i, name in enumerate(("mouse1", "mouse2", "broken")):
        sim = simulate(SimulationConfig(n_rois=8, n_frames=200, fov=(64, 64), seed=i))
        out[name] = write_suite2p(sim, root / name, layout="v1")
    (out["broken"] / "plane0" / "F.npy").write_bytes(b"not an npy file")
    (root / "tiny.toml").write_text(TINY)
    out["config"] = root / "tiny.toml"
    return out


def test_batch_isolates_a_corrupt_recording_and_resumes(
    recordings: dict[str, Path], scheduler: str, tmp_path: Path
) -> None:
    outdir = tmp_path / "out"
    inputs = [recordings[n] for n in ("mouse1", "mouse2", "broken")]
    common = ("-o", outdir, "--config", recordings["config"])  # every step

    code, _, err = run("batch", *inputs, *common, "--workers", "2")
    assert code == 1, err
    rows = summary(outdir)
    assert [rows[n]["status"] for n in ("mouse1", "mouse2", "broken")] == ["ok", "ok", "failed"]
    message = rows["broken"]["error"]
    assert message.startswith("ingest: ") and "F.npy: not a valid .npy file" in message
    assert f"failed: broken: {message}" in err
    assert "Traceback" not in err
    for name in ("mouse1", "mouse2"):
        assert rows[name]["ran"] == "ingest,fit,reconstruct,evaluate"
        assert rows[name]["ingest.rois"] == "8" and rows[name]["fit.epochs"] == "1"
        assert 0 < float(rows[name]["evaluate.linear_nmse"]) < 10
        assert rows[name]["reconstruct.times"] == str(199 * 4 + 1)
        assert (outdir / name / "model.pt").is_file()
        assert (outdir / name / "evaluation" / "report.json").is_file()
    assert "| broken | failed |" in (outdir / "summary.md").read_text()
    model_mtime = (outdir / "mouse1" / "model.pt").stat().st_mtime_ns

    # Rerun, on a running cluster: only the corrupt recording is tried again.
    code, _, err = run("batch", *inputs, *common, "--scheduler", scheduler)
    assert code == 1, err
    rows = summary(outdir)
    for name in ("mouse1", "mouse2"):
        assert rows[name]["status"] == "ok"
        assert rows[name]["ran"] == ""
        assert rows[name]["skipped"] == "ingest,fit,reconstruct,evaluate"
        assert rows[name]["fit.epochs"] == "1"  # metrics of skipped steps come from the manifest
    assert (outdir / "mouse1" / "model.pt").stat().st_mtime_ns == model_mtime
    assert rows["broken"]["status"] == "failed"

    # A changed fit setting redoes fit and what follows it, not the ingest before it; with
    # --steps fit,reconstruct, ingest must be up to date (it is) and evaluate is left alone.
    changed = tmp_path / "changed.toml"
    changed.write_text(TINY.replace("max_epochs = 1", "max_epochs = 2"))
    code, _, err = run(
        "batch", recordings["mouse1"], "-o", outdir, "--config", changed,
        "--steps", "fit,reconstruct", "--scheduler", scheduler,
    )  # fmt: skip
    assert code == 0, err
    row = summary(outdir)["mouse1"]
    assert (row["ran"], row["skipped"], row["fit.epochs"]) == ("fit,reconstruct", "ingest", "2")
    manifest = json.loads((outdir / "manifest.json").read_text())
    assert manifest["recordings"]["mouse1"]["steps"]["fit"]["metrics"]["epochs"] == 2
    assert manifest["recordings"]["broken"]["status"] == "failed"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[fit]\nmax_epoch = 1\n", "bad.toml: unknown setting(s) max_epoch"),
        ("[fitt]\n", "bad.toml: unknown section(s) fitt; expected ingest, fit, reconstruct"),
        ("reconstruct = 4\n", "section reconstruct = 4 must be a table of settings"),
        ("[reconstruct]\nupsample = 0\n", "[reconstruct] setting upsample = 0 must be >= 1"),
        ("[reconstruct]\nupsampl = 2\n", "unknown [reconstruct] setting(s) upsampl"),
        ("[ingest]\nbaseline = 'median'\n", "[ingest] setting baseline = 'median' must be one of"),
        ("[ingest]\nfs = 'fast'\n", "[ingest] setting fs = 'fast' must be a number"),
        ("[ingest]\nfs = -30.0\n", "[ingest] setting fs = -30.0 must be > 0"),
        ("[ingest]\nformat = 'avi'\n", "[ingest] setting format = 'avi' must be one of auto, "),
        ("[ingest]\ndims = [3]\n", "[ingest] setting dims = [3]: item 1 is missing"),
        ("[ingest]\ngrid_bin = true\n", "[ingest] setting grid_bin = True must be a whole"),
        ("[batch]\ndevice = 'tpu'\n", "setting device = 'tpu' must be one of auto, cpu, cuda"),
        ("[batch]\ngpu = 1\n", "[batch] setting gpu = 1 must be true or false"),
        ("fit = [", "bad.toml: not a valid TOML file"),
        ("[evaluate.fit]\nsteps_per_epoc = 3\n", "[evaluate.fit]: unknown setting(s) steps_"),
        ("[evaluate]\ntask = 'denoise'\n", "[evaluate] setting task = 'denoise' must be one of"),
        ("[evaluate]\nmethods = ['lineal']\n", "methods = ['lineal'] names unknown method"),
        ("[evaluate]\nfactor = 1\n", "[evaluate] setting factor = 1 must be >= 2"),
        ("[evaluate]\nseeds = 2.5\n", "[evaluate] setting seeds = 2.5 must be a whole number"),
        ("[evaluate]\nfraction = 1.0\n", "[evaluate] setting fraction = 1.0 must be < 1"),
    ],
)
def test_bad_config_is_one_error_line(
    recordings: dict[str, Path], tmp_path: Path, config: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    code, _, err = run("batch", recordings["mouse1"], "-o", tmp_path / "o", "--config", path)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("steps", "message"),
    [("ingest,fitt", "unknown step(s) fitt; choose from ingest, fit, reconstruct, evaluate"),
     (",", "unknown step(s) (none given); choose from ingest, fit, reconstruct, evaluate")],
)  # fmt: skip
def test_unknown_steps_are_refused(
    recordings: dict[str, Path], tmp_path: Path, steps: str, message: str
) -> None:
    code, _, err = run("batch", recordings["mouse1"], "-o", tmp_path / "o", "--steps", steps)
    assert code == 2 and err.strip() == f"error: {message}"


def test_the_same_input_twice_is_refused(recordings: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run("batch", recordings["mouse1"], recordings["mouse1"], "-o", tmp_path / "o")
    assert code == 2 and "given twice (also input 1)" in err


def test_recording_names_are_unique_and_safe() -> None:
    assert recording_names(["/d/a/rec.zarr", "/d/b/other"]) == ["rec", "other"]
    assert recording_names(["/d/s1/suite2p", "/d/s2/suite2p"]) == ["s1_suite2p", "s2_suite2p"]
    assert recording_names(["/d/x/rec.npy", "/d/x/rec.mat"]) == ["rec.npy", "rec.mat"]
    assert recording_names(["/d/my session (2)"]) == ["my_session_2"]


def test_closure_adds_the_steps_a_step_needs() -> None:
    assert closure(["reconstruct"]) == ("ingest", "fit", "reconstruct")
    assert closure(["evaluate"]) == ("ingest", "evaluate")
    assert closure(["evaluate", "fit"]) == ("ingest", "fit", "evaluate")


def test_input_hash_follows_contents(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    (folder / "plane0").mkdir(parents=True)
    (folder / "plane0" / "F.npy").write_bytes(b"abc")
    first = hash_input(folder)
    (folder / ".partial").write_bytes(b"ignored")  # hidden files do not count
    assert hash_input(folder) == first
    (folder / "plane0" / "F.npy").write_bytes(b"abd")
    assert hash_input(folder) != first
    assert hash_input(folder, mode="stat") != hash_input(folder)
    with pytest.raises(InputError, match="missing: no such file or folder"):
        hash_input(tmp_path / "missing")


def test_step_keys_chain_settings_and_upstream() -> None:
    key = step_key("fit", ["a"], {"max_epochs": 1})
    assert key == step_key("fit", ["a"], {"max_epochs": 1})
    assert key != step_key("fit", ["b"], {"max_epochs": 1})
    assert key != step_key("fit", ["a"], {"max_epochs": 2})
    fit_settings = BatchSettings.from_dict({"fit": {"max_epochs": 3}}).for_step("fit")
    assert fit_settings["max_epochs"] == 3


def test_manifest_round_trip_and_errors(tmp_path: Path) -> None:
    manifest = Manifest.load(tmp_path)
    manifest.start("rec", "/data/rec")
    manifest.finish_step("rec", "ingest", key="k1", duration_s=1.5, metrics={"rois": 3},
                         input_hash="h")  # fmt: skip
    manifest.end("rec", status="ok")
    manifest.save()
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left
    again = Manifest.load(tmp_path)
    assert again.recorded_keys("rec") == {"ingest": "k1"}
    assert again.recordings["rec"]["input_hash"] == "h"
    assert again.step("rec", "ingest")["metrics"] == {"rois": 3}
    (tmp_path / "manifest.json").write_text("{truncated")
    with pytest.raises(InputError, match=r"manifest\.json: unreadable batch manifest"):
        Manifest.load(tmp_path)


def test_a_second_batch_cannot_share_an_output_folder(tmp_path: Path) -> None:
    with BatchLock(tmp_path), pytest.raises(OutputError, match="another batch run"):
        BatchLock(tmp_path).__enter__()
    assert not (tmp_path / ".batch.lock").exists()
    (tmp_path / ".batch.lock").write_text(f"{os.uname().nodename} 999999999")  # a dead process
    with BatchLock(tmp_path):
        pass


def test_report_tables(tmp_path: Path) -> None:
    ok = RecordingResult(
        "a", "/d/a", ran=["ingest"], duration_s=1.234, metrics={"evaluate.y": 1.0, "fit.x": 0.5}
    )
    bad = RecordingResult("b|c", "/d/b", errors=["ingest: bad | file"])
    report = BatchReport(tmp_path, [ok, bad])
    report.write()
    rows = summary(tmp_path)
    assert rows["a"]["status"] == "ok" and rows["a"]["fit.x"] == "0.5"
    assert rows["b|c"]["error"] == "ingest: bad | file" and rows["b|c"]["fit.x"] == ""
    assert report.columns()[-2:] == ["fit.x", "evaluate.y"]  # pipeline order
    md = (tmp_path / "summary.md").read_text().splitlines()
    assert md[0].startswith("| recording | status | error |") and "| b\\|c | failed |" in md[3]
