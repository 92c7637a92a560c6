"""kill -9 at random moments during ``ingest``, ``fit`` and ``reconstruct``.

Each run is a real CLI process killed with SIGKILL a seeded random delay after its work
has begun (its hidden temporary or progress file appeared). Afterwards nothing may open
as a valid output unless it is complete and equal to an uninterrupted run's, and running
the same command again (``fit --resume`` where there is progress) must finish the job:
the resumed model equals the uninterrupted one. ``CST_KILL_SEEDS`` sets how many seeds
each command gets (2 in CI; the soak figures in docs/reliability.md used more).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cst_neuro.checkpoint import Checkpoint
from cst_neuro.simulate import SimulationConfig, simulate, write_suite2p
from cst_neuro.store import open_store
from cst_neuro.train import partial_path

from ._inputs import cli_command, cli_env, cst_config, run_cli

SEEDS = range(int(os.environ.get("CST_KILL_SEEDS", "2")))
pytestmark = pytest.mark.timeout(300)


def launch(args: list[str], started: Path) -> tuple[subprocess.Popen, float]:
    """Start the CLI in its own process group; return it once ``started`` has appeared."""
    proc = subprocess.Popen(
        cli_command(*args),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    pattern = f".{started.name}*" if not started.name.startswith(".") else started.name
    deadline = time.monotonic() + 200
    while proc.poll() is None and time.monotonic() < deadline:
        if list(started.parent.glob(pattern)):
            break
        time.sleep(0.01)
    return proc, time.monotonic()


def work_seconds(args: list[str], started: Path, finished: Path) -> float:
    """Run to completion; seconds from ``started`` appearing to ``finished`` appearing.

    That is the window in which a kill interrupts real work (the interpreter's exit,
    which can take seconds, comes after it).
    """
    proc, t0 = launch(args, started)
    while proc.poll() is None and not finished.exists():
        time.sleep(0.01)
    work = time.monotonic() - t0
    code = proc.wait(timeout=280)
    assert code == 0, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    return work


def kill_at_random(args: list[str], started: Path, seed: int, *, spread: float) -> bool:
    """SIGKILL the command's process group ``U(0, spread)`` s after ``started`` appears.

    The whole group dies at once, as when a cluster scheduler kills a job (batch's Dask
    workers included). Returns whether the kill came before the command finished.
    """
    proc, _ = launch(args, started)
    time.sleep(np.random.default_rng(seed).uniform(0, spread))
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        proc.stderr.close()
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return True


def same_store(path: Path, reference: Path) -> None:
    got, want = open_store(path).load(), open_store(reference).load()
    assert got.identical(want)


def assert_absent_or_complete(path: Path, reference: Path) -> None:
    """Only a complete output (equal to the reference) may open; anything else is refused."""
    if not path.exists():
        return
    same_store(path, reference)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Suite2p folders: one that takes ingest a few seconds, one small enough to fit fast."""
    root = tmp_path_factory.mktemp("kill-input")
    found = {}
    for name, rois, frames in (("big", 120, 6000), ("small", 30, 1500)):
        sim = simulate(SimulationConfig(n_rois=rois, n_frames=frames, fs=30.0, seed=5))
        found[name] = write_suite2p(sim, root / name, layout="v0")
    return found


@pytest.fixture(scope="module")
def uninterrupted(sources, tmp_path_factory, tiny_model) -> dict[str, Path]:
    """The same jobs run to completion once: the references."""
    root = tmp_path_factory.mktemp("kill-reference")
    paths = {name: root / name for name in ("big.zarr", "rec.zarr", "m.pt", "up.zarr")}
    paths["config"] = cst_config(root / "fit.toml", tiny_model, max_epochs=6)
    store, model = str(paths["rec.zarr"]), str(paths["m.pt"])
    work = {}
    for command, args, started, finished in (
        ("ingest", [str(sources["big"]), "-o", str(paths["big.zarr"])], paths["big.zarr"], None),
        ("small", [str(sources["small"]), "-o", store], paths["rec.zarr"], None),
        (
            "fit",
            [store, "-o", model, "--config", str(paths["config"])],
            partial_path(Path(model)),
            Path(model),
        ),
        (
            "reconstruct",
            [model, store, "-o", str(paths["up.zarr"]), "--upsample", "3"],
            paths["up.zarr"],
            None,
        ),
    ):
        name = "ingest" if command == "small" else command
        work[command] = work_seconds([name, *args], started, finished or started)
    paths["work"] = work  # seconds each command works after its kill signal appears
    return paths


def report(command: str, seed: int, killed: bool, **state: object) -> None:
    """One line per injected kill (collected with -s for docs/reliability.md)."""
    print(
        f"\nKILL {command} seed={seed} killed={killed} "
        + " ".join(f"{k}={v}" for k, v in state.items())
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("command", ["ingest", "reconstruct"])
def test_kill_during_a_write_then_rerun(command, sources, uninterrupted, tmp_path, seed) -> None:
    """Killed mid-write: nothing incomplete opens; a rerun gives the uninterrupted output."""
    if command == "ingest":
        out, reference = tmp_path / "rec.zarr", uninterrupted["big.zarr"]
        args = ["ingest", str(sources["big"]), "-o", str(out)]
    else:
        out, reference = tmp_path / "up.zarr", uninterrupted["up.zarr"]
        args = ["reconstruct", str(uninterrupted["m.pt"]), str(uninterrupted["rec.zarr"])]
        args += ["-o", str(out), "--upsample", "3"]
    killed = kill_at_random(args, out, seed, spread=uninterrupted["work"][command])
    complete = out.exists()
    assert_absent_or_complete(out, reference)
    leftovers = len(list(tmp_path.glob(".*")))
    code, _, err = run_cli(*args, "--overwrite", timeout=240)
    assert code == 0, err
    same_store(out, reference)
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "stale temporaries kept"
    report(command, seed, killed, complete_output=complete, temporaries_left=leftovers)


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_during_fit_then_resume_matches(uninterrupted, tmp_path, seed) -> None:
    out = tmp_path / "m.pt"
    args = ["fit", str(uninterrupted["rec.zarr"]), "-o", str(out)]
    args += ["--config", str(uninterrupted["config"])]
    spread = uninterrupted["work"]["fit"]
    killed = kill_at_random(args, partial_path(out), seed, spread=spread)
    complete, epoch = out.exists(), None
    if complete:  # finished before the kill: it must be the complete model
        Checkpoint.load(out)
    else:
        resume = ["--resume"] if partial_path(out).exists() else []
        if resume:
            epoch = Checkpoint.load(partial_path(out)).train_state["epoch"]
        code, _, err = run_cli(*args, *resume, timeout=240)
        assert code == 0, err
    report("fit", seed, killed, complete_output=complete, resumed_from_epoch=epoch)
    want = Checkpoint.load(uninterrupted["m.pt"]).state_dict
    got = Checkpoint.load(out).state_dict
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"], "progress or temporaries kept"


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_during_batch_then_rerun_finishes(sources, uninterrupted, tmp_path, seed) -> None:
    from cst_neuro._cli.app import app
    from cst_neuro.batch.runner import recording_names

    if "batch" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        pytest.skip("no batch command in this build")
    config = tmp_path / "batch.toml"
    config.write_text(
        "[fit]\n" + uninterrupted["config"].read_text().replace("[model]", "[fit.model]")
    )
    out = tmp_path / "out"
    args = ["batch", str(sources["small"]), "-o", str(out), "--steps", "ingest,fit"]
    args += ["--config", str(config), "--workers", "1"]
    # Killed during the fit step, after ingest finished: both outputs must hold up.
    name = recording_names([sources["small"]])[0]
    started = partial_path(out / name / "model.pt")
    killed = kill_at_random(args, started, seed, spread=uninterrupted["work"]["fit"])
    for found in out.rglob("recording.zarr"):
        open_store(found)  # whatever a killed batch left must be complete
    code, _, err = run_cli(*args, timeout=280)
    assert code == 0, err
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    same_store(folder / "recording.zarr", uninterrupted["rec.zarr"])
    Checkpoint.load(folder / "model.pt")
    report("batch", seed, killed)
