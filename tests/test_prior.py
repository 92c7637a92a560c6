"""The calcium prior: the shipped weights, zero-shot binding to any recording, fine-tuning,
--prior none, and the blend that keeps a fit near linear interpolation where it must."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cst_neuro.checkpoint import load_model
from cst_neuro.errors import InputError
from cst_neuro.fit_config import FitConfig
from cst_neuro.prior import default_prior_path, load_prior
from cst_neuro.reconstruct import Reconstructor
from cst_neuro.train import fit

DOCS = Path(__file__).resolve().parents[1] / "docs" / "prior.md"


def recording(n_rois: int, fs: float, n_frames: int, planes: int, seed: int = 0):
    from cst_neuro.evaluate.recording import traces_recording

    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fs
    values = np.sin(
        2 * np.pi * 0.3 * t[:, None] + rng.uniform(0, 6, n_rois)
    ) + 0.2 * rng.standard_normal((n_frames, n_rois))
    plane = np.arange(n_rois) % planes
    ds = traces_recording(
        values,
        fs=fs,
        name="odd",
        roi_y=rng.uniform(0, 200, n_rois),
        roi_x=rng.uniform(0, 200, n_rois),
        roi_plane=plane,
        roi_time_offset=plane / (fs * planes),
    )
    return ds.assign(valid=("time", np.ones(n_frames, bool)))


def test_the_shipped_prior_loads_safely_and_matches_its_recorded_hash() -> None:
    path = default_prior_path()
    assert path.is_file(), "the package must ship its default prior"
    assert path.stat().st_size <= 2 * 1024 * 1024
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == "prior"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not DOCS.is_file():
        pytest.skip("docs/prior.md is not in this checkout")
    recorded = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", DOCS.read_text())
    assert recorded and recorded.group(1) == digest
    assert load_prior("default") is not None and load_prior("none") is None
    with pytest.raises(InputError, match=r"calcium prior, not a model .* --max-epochs 0"):
        load_model(path)  # a prior is bound to a recording first


def test_zero_shot_on_a_recording_unlike_the_corpus(tiny_prior: Path, tmp_path: Path) -> None:
    """70 ROIs on 3 planes at 2.5 Hz: more ROIs, another rate, planes the corpus never had."""
    ds = recording(70, 2.5, 120, planes=3)
    config = FitConfig(prior=str(tiny_prior), max_epochs=0, window=32)
    result = fit(ds, tmp_path / "m.pt", config=config)
    assert result.epochs == 0 and result.prior == "p.pt" and np.isfinite(result.best_val)
    assert result.blend is not None and result.best_val == result.blend.model  # one pass
    model, checkpoint = load_model(tmp_path / "m.pt")
    prior = load_prior(tiny_prior)
    for name, value in prior.state_dict.items():  # the prior's weights, unchanged
        torch.testing.assert_close(model.state_dict()[name], value)
    assert (model.id_embed.weight == 0).all() and model.channel_gain is None
    assert checkpoint.info["prior"] == "p.pt" and "blend" in checkpoint.info
    times = ds["time"].values[10] + np.arange(8) / (4 * 2.5)
    values = Reconstructor(model, checkpoint, ds).predict(times)
    assert values.shape == (8, 70, 1) and np.isfinite(values).all()


def test_fine_tuning_starts_from_the_prior(
    tiny_prior: Path, tmp_path: Path, tiny_fit_config
) -> None:
    ds = recording(5, 20.0, 200, planes=1)
    config = tiny_fit_config(prior=str(tiny_prior), model={}, max_epochs=1, window=32)
    result = fit(ds, tmp_path / "m.pt", config=config)
    assert result.epochs == 1 and result.prior == "p.pt"


def test_fine_tuning_that_never_beats_the_prior_keeps_the_prior(
    tiny_prior: Path, tmp_path: Path, tiny_fit_config
) -> None:
    """The prior is epoch 0 of early stopping: a learning rate that wrecks every epoch ends
    with the zero-shot model, its validation error and its blend, not the best wreck."""
    ds = recording(5, 20.0, 200, planes=1)
    settings = dict(prior=str(tiny_prior), model={}, window=32)
    zero = fit(ds, tmp_path / "zero.pt", config=tiny_fit_config(**settings, max_epochs=0))
    wrecked = tiny_fit_config(**settings, max_epochs=2, lr=0.1)
    tuned = fit(ds, tmp_path / "tuned.pt", config=wrecked)
    assert tuned.epochs == 2 and tuned.best_epoch == 0
    assert all(row["val"] > zero.best_val for row in tuned.history)  # every epoch was worse
    assert tuned.best_val == pytest.approx(zero.best_val, rel=1e-6)
    assert tuned.blend == zero.blend
    kept, checkpoint = load_model(tmp_path / "tuned.pt")
    for name, value in load_model(tmp_path / "zero.pt")[0].state_dict().items():
        torch.testing.assert_close(kept.state_dict()[name], value)
    assert checkpoint.info["best_epoch"] == 0


def test_fine_tuning_that_clearly_beats_the_prior_is_kept(
    tiny_prior: Path, tmp_path: Path, tiny_fit_config
) -> None:
    """A prior of three pretraining steps is poor on anything: a few epochs of fine-tuning
    beat it far beyond the validation noise, and the fit says by how much."""
    ds = recording(5, 20.0, 400, planes=1)
    config = tiny_fit_config(
        prior=str(tiny_prior), model={}, window=32, max_epochs=4, steps_per_epoch=10, lr=3e-3
    )
    result = fit(ds, tmp_path / "m.pt", config=config)
    assert result.best_epoch > 0 and result.gain is not None and result.gain.significant
    assert result.best_val == pytest.approx(result.gain.tuned, rel=1e-6)
    _, checkpoint = load_model(tmp_path / "m.pt")
    assert checkpoint.info["best_epoch"] == result.best_epoch
    assert checkpoint.info["fine_tuning"]["significant"] is True


def test_prior_none_trains_from_the_fresh_network(tmp_path: Path, tiny_fit_config) -> None:
    """--prior none is today's from-scratch fit: the network sized to the data, seeded."""
    from cst_neuro.model.modes import get_mode
    from cst_neuro.train import _initial_model

    ds = recording(4, 20.0, 200, planes=1)
    config = tiny_fit_config(prior="none", max_epochs=0)
    fit(ds, tmp_path / "a.pt", config=config)
    _, checkpoint = load_model(tmp_path / "a.pt")
    assert checkpoint.info["prior"] == "none"
    torch.manual_seed(config.seed)
    from cst_neuro.data import ChannelWindows

    windows = ChannelWindows(ds, window=config.window, frames_per_unit=1.0)
    fresh, _ = _initial_model(get_mode("cst"), windows, config, "none")
    for name, value in fresh.state_dict().items():
        if name != "channel_blend":
            torch.testing.assert_close(checkpoint.state_dict[name], value)


def test_the_prior_refuses_settings_that_would_change_its_network(
    tiny_prior: Path, tmp_path: Path
) -> None:
    ds = recording(4, 20.0, 200, planes=1)
    with pytest.raises(InputError, match="would change the prior's network"):
        fit(
            ds,
            tmp_path / "m.pt",
            config=FitConfig(prior=str(tiny_prior), model={"d_model": 8}, max_epochs=0),
        )
    with pytest.raises(InputError, match="windows are 32 frames"):
        fit(ds, tmp_path / "m.pt", config=FitConfig(prior=str(tiny_prior), window=16, max_epochs=0))
    with pytest.raises(InputError, match="prior must be none"):
        FitConfig.from_dict({"mode": "paper", "prior": "default"})


def test_a_model_checkpoint_is_not_a_prior(tmp_path: Path, tiny_fit_config) -> None:
    ds = recording(4, 20.0, 200, planes=1)
    fit(ds, tmp_path / "m.pt", config=tiny_fit_config(prior="none", max_epochs=0))
    with pytest.raises(InputError, match="not a prior"):
        load_prior(tmp_path / "m.pt")
