"""``cst-neuro evaluate``: a report folder on success, one error line and exit 2 otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xarray as xr
from typer.testing import CliRunner

from cst_neuro._cli.app import app
from cst_neuro.store import write_recording


@pytest.fixture(scope="module")
def store(simulated: xr.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "sim.zarr"
    write_recording(simulated.drop_vars("clean_dff"), path)
    return path


def test_evaluate_writes_a_report(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(store),
            "--task",
            "infill",
            "--fraction",
            "0.5",
            "--block",
            "4",
            "--methods",
            "linear,cubic,gp",
            "--seeds",
            "2",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| linear |" in result.output and f"wrote {out}" in result.output
    data = json.loads((out / "report.json").read_text())
    assert data["label"] == "infill 50% (blocks of 4)" and len(data["runs"]) == 2
    again = CliRunner().invoke(app, ["evaluate", str(store), "--methods", "linear", "-o", str(out)])
    assert again.exit_code == 2
    assert again.output.strip() == f"error: {out}: already exists; pass --overwrite to replace it"


def test_evaluate_bad_input_exits_2_with_one_line(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(
        app,
        [
            "evaluate",
            str(store),
            "--task",
            "spatial",
            "--methods",
            "pchip",
            "-o",
            str(tmp_path / "r"),
        ],
    )
    assert bad.exit_code == 2
    assert bad.output.startswith("error: ") and "do not apply to task spatial" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    missing = runner.invoke(
        app, ["evaluate", str(tmp_path / "nope.zarr"), "-o", str(tmp_path / "r")]
    )
    assert missing.exit_code == 2 and "no such store" in missing.output
    assert not (tmp_path / "r").exists()
