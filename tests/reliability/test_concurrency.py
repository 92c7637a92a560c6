"""Several processes writing into one folder at the same moment.

Different outputs never clobber each other (and one writer's cleanup of killed runs'
temporaries never touches a live writer's). For the same output the contract is:
without ``--overwrite`` exactly one writer succeeds and the other fails with a clear
error; with ``--overwrite`` the output is exactly one writer's complete data, never a
mix. Writers start together on a barrier file so that their writes overlap.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cst_neuro.store import open_store

from ._inputs import cli_command, cli_env

pytestmark = pytest.mark.timeout(300)

WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from pathlib import Path
    from cst_neuro.errors import CSTNeuroError
    from cst_neuro.schema import new_recording
    from cst_neuro.store import write_recording

    out, seed, go, overwrite = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    values = np.random.default_rng(seed).normal(size=(20000, 40)).astype("f4")
    ds = new_recording({"dff": (("time", "roi"), values)}, time=np.arange(20000) / 30.0,
                       fs=30.0, source_format="test", source_name=f"writer-{seed}")
    while not go.exists():
        time.sleep(0.002)
    try:
        write_recording(ds, out, overwrite=overwrite == "1")
    except CSTNeuroError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    """
)


def expected(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(20000, 40)).astype("f4")


def start_together(jobs: list[tuple[Path, int, bool]], folder: Path) -> list[tuple[int, str]]:
    """Start one writer per (output, seed, overwrite), release them at once; (code, stderr)."""
    go = folder / f".go-{time.monotonic_ns()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(out), str(seed), str(go), str(int(over))],
            env=cli_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for out, seed, over in jobs
    ]
    time.sleep(4.0)  # imports done in every writer
    go.touch()
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    go.unlink()
    return results


def writer_of(path: Path, seeds: list[int]) -> int:
    """Which writer's data the store holds, exactly (fails on a mix or a damaged store)."""
    values = open_store(path)["dff"].values
    owners = [s for s in seeds if np.array_equal(values, expected(s))]
    assert len(owners) == 1, "the store is not exactly one writer's data"
    return owners[0]


def test_different_outputs_in_one_folder_never_clobber(tmp_path: Path) -> None:
    jobs = [(tmp_path / f"rec{i}.zarr", i, False) for i in range(4)]
    results = start_together(jobs, tmp_path)
    assert [code for code, _ in results] == [0] * 4, results
    for out, seed, _ in jobs:
        assert writer_of(out, [seed]) == seed
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"rec{i}.zarr" for i in range(4)]


@pytest.mark.parametrize("round_", range(2))
def test_same_output_without_overwrite_one_wins_one_fails(tmp_path: Path, round_: int) -> None:
    out = tmp_path / "rec.zarr"
    results = start_together([(out, 10 + round_, False), (out, 20 + round_, False)], tmp_path)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.startswith(f"error: {out}:"), loser
    assert "another process" in loser or "already exists" in loser
    winner = [10 + round_, 20 + round_][[code for code, _ in results].index(0)]
    assert writer_of(out, [10 + round_, 20 + round_]) == winner
    assert [p.name for p in tmp_path.iterdir()] == ["rec.zarr"]


def test_same_output_with_overwrite_is_exactly_one_writer(tmp_path: Path) -> None:
    out = tmp_path / "rec.zarr"
    results = start_together([(out, 31, True), (out, 32, True), (out, 33, True)], tmp_path)
    for code, err in results:
        assert code == 0 or (code == 2 and err.startswith(f"error: {out}:")), results
    assert any(code == 0 for code, _ in results)
    writer_of(out, [31, 32, 33])
    assert [p.name for p in tmp_path.iterdir()] == ["rec.zarr"]


def test_two_fits_of_the_same_model_cannot_both_succeed(trained, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    args = ["fit", str(trained["store"]), "-o", str(out), "--config", str(trained["config"])]
    procs = [
        subprocess.Popen(cli_command(*args), env=cli_env(), stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert f"error: {out}:" in loser and "Traceback" not in loser, loser
    # the loser may leave its (shared) progress file; it never looks like a model
    assert {p.name for p in tmp_path.iterdir()} <= {"m.pt", ".m.pt.partial"}
