"""Checkpoints: a typed round trip, safe loading, format 1 still loads, damage named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cst_neuro.checkpoint import Checkpoint, DataBinding, load_model
from cst_neuro.data import Normalizer
from cst_neuro.errors import InputError, OutputError
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.modes import MODES, DataShape, get_mode

SHAPE = DataShape(value_dim=1, n_channels=3, window=8, train_values=100)


def _checkpoint(mode: str = "cst") -> Checkpoint:
    spec = get_mode(mode)
    config = spec.auto_config(SHAPE, {"d_model": 8, "n_heads": 2, "d_ff": 8, "n_layers": 1})
    torch.manual_seed(0)
    frames = np.zeros(20, bool)
    frames[:15] = True
    return Checkpoint(
        kind="model",
        mode=mode,
        model_config=config,
        fit_config=FitConfig(mode=mode, window=8),
        state_dict=spec.build(config).state_dict(),
        normalizer=Normalizer(np.zeros((3, 1), np.float32), np.ones((3, 1), np.float32)),
        data=DataBinding("dff", "traces", 1, 3, 30.0, "rec", "abc", frames, ~frames),
        history=[{"epoch": 1, "train": 0.5, "val": 0.4}],
        best_val=0.4,
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_round_trip_keeps_everything(tmp_path: Path, mode: str) -> None:
    saved = _checkpoint(mode)
    saved.save(tmp_path / "m.pt")
    model, loaded = load_model(tmp_path / "m.pt")
    assert loaded.mode == mode and loaded.model_config == saved.model_config
    assert loaded.fit_config == saved.fit_config and loaded.history == saved.history
    assert loaded.data is not None and loaded.data.fingerprint == "abc"
    np.testing.assert_array_equal(loaded.data.val_frames, saved.data.val_frames)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved.state_dict[name])
    assert not model.training


def test_format_1_checkpoints_still_load(tmp_path: Path) -> None:
    """Before the registry, the mode sat in model_config, which held every mode's fields."""
    raw = _checkpoint("paper").to_dict()
    raw["format_version"] = 1
    raw["model_config"].update(mode=raw.pop("mode"), n_fourier=64, interpolant="none")
    torch.save(raw, tmp_path / "old.pt")
    _, loaded = load_model(tmp_path / "old.pt")
    assert loaded.mode == "paper" and not hasattr(loaded.model_config, "n_fourier")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(format_version="2"), "format_version must be an integer"),
        (lambda s: s.update(kind="weights"), "kind must be one of"),
        (lambda s: s.update(mode="gpt"), "mode must be one of"),
        (lambda s: s["normalizer"].update(mean=torch.zeros(2, 1)), r"normalizer.mean must be"),
        (lambda s: s["normalizer"].update(std=torch.zeros(3, 1)), "std must be positive"),
        (lambda s: s["normalizer"].update(mean=torch.full((3, 1), np.nan)), "non-finite"),
        (lambda s: s["data"].update(fs="30"), "data.fs must be a positive number"),
        (lambda s: s["data"].update(val_frames=torch.zeros(5, dtype=torch.bool)), "differ"),
        (lambda s: s["fit_config"].update(window=0), "setting window = 0"),
        (lambda s: s.update(best_val="low"), "best_val must be a number"),
    ],
)
def test_damaged_entries_are_named_errors(tmp_path: Path, change, message: str) -> None:
    raw = _checkpoint().to_dict()
    change(raw)
    torch.save(raw, tmp_path / "m.pt")
    with pytest.raises(InputError, match=message) as info:
        Checkpoint.load(tmp_path / "m.pt")
    assert str(info.value).startswith(str(tmp_path / "m.pt"))


def test_a_progress_checkpoint_is_not_a_model(tmp_path: Path) -> None:
    progress = dataclasses.replace(
        _checkpoint(), kind="progress", normalizer=None, data=None, optimizer={}, train_state={}
    )
    progress.save(tmp_path / "p.pt")
    assert Checkpoint.load(tmp_path / "p.pt").kind == "progress"
    with pytest.raises(InputError, match="unfinished training checkpoint"):
        load_model(tmp_path / "p.pt")


def test_without_replace_an_existing_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_text("someone else's")
    with pytest.raises(OutputError, match="created by another process"):
        _checkpoint().save(path, replace=False)
    assert path.read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
