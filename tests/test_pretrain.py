"""Pretraining: the synthetic families, the corpus, a tiny run, exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cst_neuro.checkpoint import Checkpoint
from cst_neuro.pretrain import PretrainConfig, pretrain
from cst_neuro.pretrain import loop as loop_module
from cst_neuro.pretrain.corpus import Corpus, observe, real_sources, synthetic_source, window_tokens
from cst_neuro.pretrain.families import draw_recording
from cst_neuro.pretrain.loop import batch_at

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "n_decoder_layers": 1, "d_ff": 16}


def tiny(**kw) -> PretrainConfig:
    base = dict(
        max_steps=4,
        validate_every=2,
        n_validation=4,
        batch_size=2,
        max_channels=6,
        max_queries=32,
        n_collocation=8,
        warmup_steps=2,
        model=TINY,
    )
    return PretrainConfig(**{**base, **kw})


@pytest.mark.parametrize("seed", range(20))
def test_synthetic_recordings_are_finite_and_their_target_excludes_white_noise(seed) -> None:
    rec = draw_recording(np.random.default_rng(seed), 20.0)
    assert np.isfinite(rec.noisy).all() and np.isfinite(rec.target).all()
    assert rec.noisy.shape == rec.target.shape and rec.noisy.shape[0] >= round(20 * rec.fs) - 1
    assert 4.0 <= rec.fs <= 200.0 and ((rec.positions >= 0) & (rec.positions <= 1)).all()
    residual = rec.noisy - rec.target
    assert residual.std() > 0  # white noise was added
    assert (
        np.abs(residual.mean(0)).max()
        < 6 * residual.std(0).max() / np.sqrt(rec.noisy.shape[0]) + 1e-6
    )


def test_windows_query_between_the_observed_frames() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        obs = observe(synthetic_source(rng, 30.0, 8), rng, 16)
        if obs is None:
            continue
        parts = window_tokens(obs, rng, 16, max_channels=8, max_queries=64)
        if parts is None:
            continue
        ctx, qry = parts
        assert ctx["coords"][:, 0].min() >= 0 and ctx["coords"][:, 0].max() <= 15
        assert qry["coords"][:, 0].min() >= 0 and qry["coords"][:, 0].max() <= 15
        assert np.isfinite(qry["values"]).all() and len(qry["ids"]) <= 64
        if obs.factor > 1:  # sub-frame queries exist
            assert (qry["coords"][:, 0] % 1 != 0).any()
        assert np.isfinite(obs.features).all()


def test_a_batch_is_a_pure_function_of_seed_step_and_rank() -> None:
    config = tiny()
    a, b, c = batch_at(config, [], 3, 0), batch_at(config, [], 3, 0), batch_at(config, [], 3, 1)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.values, y.values)
        torch.testing.assert_close(x.coords, y.coords)
        torch.testing.assert_close(x.channels, y.channels)
    assert not torch.equal(a[0].values, c[0].values) or a[0].values.shape != c[0].values.shape


def test_real_recordings_join_the_corpus(tmp_path: Path) -> None:
    from cst_neuro.simulate import SimulationConfig, simulate
    from cst_neuro.store import write_recording

    sim = simulate(SimulationConfig(n_rois=5, n_frames=300, fs=30.0, seed=2))
    from cst_neuro.preprocess import compute_dff

    write_recording(compute_dff(sim.recording()), tmp_path / "r.zarr")
    (source,) = real_sources(tmp_path / "r.zarr")
    assert source.fs == 30.0 and source.noisy.shape == (300, 5)
    corpus = Corpus(np.random.default_rng(0), real=[source], real_share=1.0, window=16)
    ctx, qry = corpus.batch(3)
    assert ctx.values.shape[0] == qry.values.shape[0] == 3 and ctx.channels.shape[1] == 5


def test_a_tiny_run_writes_a_prior(tmp_path: Path) -> None:
    result = pretrain(tmp_path / "p.pt", config=tiny())
    assert result.steps == 4 and len(result.history) == 2
    raw = torch.load(tmp_path / "p.pt", weights_only=True)
    assert raw["kind"] == "prior"
    prior = Checkpoint.load(tmp_path / "p.pt")
    assert prior.model_config.n_ids == 0 and prior.info["steps"] == 4
    assert np.isfinite(prior.best_val) and prior.best_val == min(r["ratio"] for r in result.history)
    assert not (tmp_path / ".p.pt.partial").exists()


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path: Path, monkeypatch) -> None:
    pretrain(tmp_path / "full.pt", config=tiny())
    save = loop_module._save

    def killed(output, kind, model, network, config, state, *rest):
        save(output, kind, model, network, config, state, *rest)
        if kind == "progress" and state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "_save", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "again.pt", config=tiny())
    monkeypatch.setattr(loop_module, "_save", save)
    pretrain(tmp_path / "again.pt", config=tiny(), resume=True)
    full, again = (Checkpoint.load(tmp_path / n).state_dict for n in ("full.pt", "again.pt"))
    for name, value in full.items():
        torch.testing.assert_close(again[name], value, rtol=1e-5, atol=1e-6)


def test_the_cli_pretrains(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cst_neuro._cli.app import app

    result = CliRunner().invoke(
        app, ["pretrain", "-o", str(tmp_path / "p.pt"), "--max-steps", "2", "--max-minutes", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "x linear interpolation" in result.output
