"""The command line's contract: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cst_neuro import __version__
from cst_neuro._cli.app import app
from cst_neuro.schema import new_recording
from cst_neuro.store import write_recording

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(tmp_path: Path, rng: np.random.Generator) -> Path:
    traces = rng.normal(size=(300, 4)).astype("f4")
    traces[7, 1] = np.nan
    ds = new_recording(
        {"dff": (("time", "roi"), traces), "iscell": ("roi", np.array([1, 1, 0, 1], bool))},
        time=np.arange(300) / 10.0,
        fs=10.0,
        source_format="suite2p",
        source_name="plane0",
        attrs={"dff_method": "maximin", "dff_params": '{"win_baseline": 60.0}'},
    )
    return write_recording(ds, tmp_path / "rec.zarr")


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"cst-neuro {__version__}"


def test_help_shows_toml_table_names() -> None:
    """Help texts are plain text: a table name in brackets is not eaten as markup."""
    code, out, _ = run("batch", "--help")
    assert code == 0 and "[ingest], [fit], [reconstruct], [evaluate]," in out


def test_info_prints_a_summary(store: Path) -> None:
    code, out, err = run("info", str(store))
    assert code == 0, err
    assert "10 Hz, 300 frames, 30.00 s" in out
    assert "ROIs:      4 (3 cells)" in out
    assert "ΔF/F:      maximin (win_baseline=60.0)" in out
    assert "valid:     299/300 frames complete" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "{tmp}/missing.zarr"), "missing.zarr: no such store"),
        (("info", "{tmp}"), "not a zarr store"),
        (("ingest", "{tmp}/missing.npy", "-o", "{tmp}/o.zarr"), "missing.npy: no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args, message: str) -> None:
    code, out, err = run(*(a.format(tmp=tmp_path) for a in args))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in out + err


def test_ingest_refuses_existing_output_before_reading(store: Path, tmp_path: Path) -> None:
    code, _, err = run("ingest", str(store), "-o", str(store))
    assert code == 2
    assert err.strip() == f"error: {store}: already exists; pass --overwrite to replace it"


def test_usage_errors_exit_2() -> None:
    code, _, _ = run("ingest")
    assert code == 2
