"""Precision: auto picks bf16 only where the hardware multiplies it; bf16 agrees with fp32."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from cst_neuro import device as device_module
from cst_neuro.device import autocast, resolve_precision
from cst_neuro.errors import InputError
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.modes import get_mode
from cst_neuro.pretrain import PretrainConfig
from cst_neuro.pretrain.loop import batch_at
from cst_neuro.train import TrainStep, optimise

TINY = {"d_model": 32, "n_heads": 2, "n_layers": 1, "n_decoder_layers": 1, "d_ff": 32}
# normalised units (a ROI's sd): bf16 keeps ~3 significant digits per product, and an
# untrained network's outputs (what this compares) carry the error of every layer
MEAN_TOLERANCE, MAX_TOLERANCE = 0.03, 0.15
LOSS_TOLERANCE = 0.05  # relative, step by step over a short run


def test_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: False)
    assert resolve_precision(cpu, "auto") == "fp32"
    assert isinstance(autocast(cpu, "auto"), nullcontext)
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    assert resolve_precision(cpu, "auto") == "bf16"
    assert resolve_precision(cpu, "fp32") == "fp32"
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision(cpu, "fp16")


def _model_and_batches():
    config = PretrainConfig(batch_size=2, max_channels=4, max_queries=48, model=TINY)
    mode = get_mode("cst")
    torch.manual_seed(0)
    model = mode.build(mode.make_config(config.network()))
    return mode, model, [batch_at(config, [], i, 0) for i in range(6)]


def test_bf16_outputs_agree_with_fp32() -> None:
    mode, model, batches = _model_and_batches()
    model.eval()
    for ctx, qry in batches:
        with torch.no_grad():
            full = mode.predict(model, mode.context(model, ctx), qry.coords, qry.ids)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                half = mode.predict(model, mode.context(model, ctx), qry.coords, qry.ids)
        error = (half.float() - full).abs()
        assert error.mean() < MEAN_TOLERANCE and error.max() < MAX_TOLERANCE


def test_a_short_bf16_run_follows_the_fp32_loss_curve() -> None:
    curves = []
    for cast in (nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16)):
        mode, model, batches = _model_and_batches()
        step = TrainStep(model, mode, FitConfig(n_collocation=8).sobolev())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        curves.append([optimise(step, model, opt, c, q, gen, cast) for c, q in batches])
    full, half = np.array(curves[0]), np.array(curves[1])
    assert np.all(np.abs(half - full) <= LOSS_TOLERANCE * np.abs(full))
