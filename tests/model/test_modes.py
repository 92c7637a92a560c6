"""The mode registry: every mode builds, trains a step and predicts through one interface."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cst_neuro.data import CHANNEL_FEATURES, Tokens
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.modes import MODES, DataShape, config_fields, get_mode


def _tokens(B: int, N: int, n_ids: int, seed: int) -> Tokens:
    g = torch.Generator().manual_seed(seed)
    return Tokens(
        coords=torch.rand(B, N, 3, generator=g) * torch.tensor([7.0, 1.0, 1.0]),
        values=torch.randn(B, N, 1, generator=g),
        ids=torch.randint(0, n_ids, (B, N), generator=g),
        mask=torch.ones(B, N, dtype=torch.bool),
        value_mask=torch.ones(B, N, 1, dtype=torch.bool),
        channels=torch.randn(1, n_ids, len(CHANNEL_FEATURES), generator=g),
        seconds_per_frame=torch.full((B,), 1 / 30),
    )


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_builds_trains_and_predicts(name: str) -> None:
    mode = get_mode(name)
    shape = DataShape(value_dim=1, n_channels=5, window=8, train_values=1000)
    config = mode.auto_config(shape, {"d_model": 16, "n_heads": 2, "d_ff": 16, "n_layers": 1})
    assert type(config) is mode.config_type()
    torch.manual_seed(0)
    model = mode.build(config)
    ctx, qry = _tokens(2, 12, 5, seed=0), _tokens(2, 4, 5, seed=1)
    sobolev = FitConfig(mode=name, window=8, n_collocation=8).sobolev()
    loss = mode.loss(model, ctx, qry, torch.Generator().manual_seed(0), sobolev)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        pred = mode.predict(model, mode.context(model, ctx), qry.coords, qry.ids)
    assert pred.shape == (2, 4, 1)


def test_unknown_modes_are_refused_with_the_list() -> None:
    with pytest.raises(ValueError, match="mode must be one of cst, transformer, paper"):
        get_mode("gpt")


def test_model_settings_are_those_of_the_modes_config() -> None:
    assert "n_latent_times" in config_fields("cst")
    assert "n_latent_times" not in config_fields("paper")
    assert {"d_model", "n_heads", "dropout"} <= config_fields("transformer")


def test_listing_modes_does_not_import_torch() -> None:
    code = "import sys, cst_neuro.model.modes; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
