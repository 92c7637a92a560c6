"""Training: determinism, exact resume after a kill, safe checkpoints, DDP on CPU."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cst_neuro import train as train_module
from cst_neuro.checkpoint import Checkpoint, load_model
from cst_neuro.errors import InputError
from cst_neuro.model.modes import MODES
from cst_neuro.simulate import SimulationConfig, simulate
from cst_neuro.train import FitConfig, fit, partial_path

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32}


@pytest.fixture(scope="module")
def recording():
    from cst_neuro.preprocess import compute_dff

    sim = simulate(SimulationConfig(n_rois=6, n_frames=240, fs=20.0, seed=3))
    return compute_dff(sim.recording()).load()


def tiny_config(**kw) -> FitConfig:
    cst = kw.get("mode", "cst") == "cst"
    model = {**TINY, "n_fourier": 8} if cst else TINY
    base = dict(
        prior="none" if cst else None,
        window=16,
        batch_size=2,
        steps_per_epoch=3,
        max_epochs=4,
        patience=50,
        n_collocation=16,
        max_minutes=5.0,
        model=model,
    )
    return FitConfig(**{**base, **kw})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return Checkpoint.load(path).state_dict


@pytest.mark.parametrize("mode", list(MODES))
def test_fit_writes_a_loadable_model(recording, tmp_path: Path, mode: str) -> None:
    result = fit(recording, tmp_path / "m.pt", config=tiny_config(mode=mode, max_epochs=2))
    assert result.epochs == 2 and len(result.history) == 2
    _, checkpoint = load_model(tmp_path / "m.pt")
    assert checkpoint.mode == mode and checkpoint.data.var == "dff"
    assert not partial_path(tmp_path / "m.pt").exists()


def test_same_seed_same_weights(recording, tmp_path: Path) -> None:
    fit(recording, tmp_path / "a.pt", config=tiny_config(max_epochs=2))
    fit(recording, tmp_path / "b.pt", config=tiny_config(max_epochs=2))
    for name, value in weights(tmp_path / "a.pt").items():
        torch.testing.assert_close(value, weights(tmp_path / "b.pt")[name], rtol=0, atol=0)


def test_resume_after_a_kill_reaches_the_same_weights(
    recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit(recording, tmp_path / "full.pt", config=tiny_config())
    save = train_module._save_progress

    def killed_after_epoch_2(output, model, optimizer, state, *args):
        save(output, model, optimizer, state, *args)
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies right after a progress checkpoint

    monkeypatch.setattr(train_module, "_save_progress", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(recording, tmp_path / "resumed.pt", config=tiny_config())
    assert not (tmp_path / "resumed.pt").exists()  # no model that looks finished
    monkeypatch.setattr(train_module, "_save_progress", save)
    result = fit(recording, tmp_path / "resumed.pt", config=tiny_config(), resume=True)
    assert result.epochs == 4
    full, resumed = weights(tmp_path / "full.pt"), weights(tmp_path / "resumed.pt")
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-7)


def test_resume_without_a_partial_run_is_an_error(recording, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to resume"):
        fit(recording, tmp_path / "m.pt", config=tiny_config(), resume=True)


def test_a_long_epoch_ends_at_the_time_budget(
    recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget shorter than one epoch is kept: the epoch ends early and is validated.

    The clock is fake (one second per reading), so the test does not depend on speed."""
    clock = iter(range(10**6))
    monkeypatch.setattr(train_module, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    steps = []
    sample = train_module.sample_batch

    def counted(*args, **kw):
        steps.append(1)
        return sample(*args, **kw)

    monkeypatch.setattr(train_module, "sample_batch", counted)
    config = tiny_config(steps_per_epoch=1000, max_epochs=5, max_minutes=0.1)  # 6 "seconds"
    result = fit(recording, tmp_path / "m.pt", config=config)
    assert result.stopped == "max-minutes" and result.epochs == 1
    assert len(steps) == 7 and len(result.history) == 1  # 6 clock readings after the 1st step
    assert load_model(tmp_path / "m.pt")[1].mode == "cst"


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_checkpoint_runs_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as fh:
        pickle.dump({"format": "cst-neuro-checkpoint", "payload": Exploit()}, fh)
    with pytest.raises(InputError, match=r"evil\.pt: not a loadable cst-neuro checkpoint"):
        Checkpoint.load("evil.pt")
    assert not Path("pwned").exists()


def test_unfinished_checkpoint_is_not_a_model(recording, tmp_path: Path, monkeypatch) -> None:
    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_track_best", stop)
    with pytest.raises(KeyboardInterrupt):
        fit(recording, tmp_path / "m.pt", config=tiny_config())
    assert not (tmp_path / "m.pt").exists()


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from cst_neuro.preprocess import compute_dff
    from cst_neuro.simulate import SimulationConfig, simulate
    from cst_neuro.train import FitConfig, fit
    torch.set_num_threads(1)
    sim = simulate(SimulationConfig(n_rois=6, n_frames=240, fs=20.0, seed=3))
    config = FitConfig(window=16, batch_size=2, steps_per_epoch=2, max_epochs=2,
                       n_collocation=8, prior="none", model=dict(d_model=16, n_heads=2, n_layers=1,
                       d_ff=32, n_fourier=8))
    fit(compute_dff(sim.recording()), sys.argv[1], config=config, device="cpu")
    print("rank done")
    """
)


def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(script),
        str(tmp_path / "m.pt"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.stdout.count("rank done") == 2, done.stderr[-2000:]
    # after both ranks have finished (fit returned, its process group destroyed), a rank
    # sometimes aborts in a C++ destructor at interpreter exit (torch 2.13, gloo, about 1
    # run in 10 here); training itself is complete, which is what this test checks
    exit_abort = "terminate called without an active exception" in done.stderr
    assert done.returncode == 0 or exit_abort, done.stderr[-2000:]
    _, checkpoint = load_model(tmp_path / "m.pt")
    assert len(checkpoint.history) == 2 and np.isfinite(checkpoint.best_val)


def test_validation_of_a_wide_recording_is_thinned_to_its_token_budget(recording) -> None:
    """Validation windows beyond ``val_tokens`` give way to evenly spaced ones: a long,
    wide recording's validation stays a bounded cost per epoch."""
    from cst_neuro.data import ChannelWindows, TimeSplit
    from cst_neuro.train import validation_batches

    split = TimeSplit.blocks(recording.sizes["time"], val_fraction=0.3, block_frames=1, seed=0)
    windows = ChannelWindows(recording, window=16, frames_per_unit=1.0)

    def batches(**kw) -> list:
        return list(validation_batches(windows, split.val, tiny_config(**kw).resolved()))

    every, two = batches(), batches(val_tokens=2 * 16 * 6)  # two windows of 6 channels
    assert len(every) == 15 and len(two) == 2  # 240 frames: 15 windows of 16 frames
    for kept, full in zip(two, (every[0], every[-1]), strict=True):  # the first and the last
        torch.testing.assert_close(kept[1].values, full[1].values)
