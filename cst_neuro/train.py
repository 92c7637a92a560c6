"""Fitting a model to a Recording: the training loop, seeded, resumable, budgeted, optionally DDP.

The loop samples windows of the training frames (`data.sample_batch`), holds out a share
of each window's frames as queries, and minimises the mode's loss (`model.modes`: Sobolev
for ``cst``, MSE for ``transformer``, the release's input-Jacobian loss for ``paper``).

Validation uses blocks of frames that training never sees, as queries against context
from the training frames (no leakage); early stopping keeps the best weights. Progress
checkpoints (model, optimiser, every RNG state) are written atomically next to the output
as ``.NAME.partial`` after each epoch, so ``resume=True`` continues exactly where a killed
run stopped; the final model is written to the output only when training ends. Under
``torchrun`` gradients are averaged across processes (`_distributed`); rank 0 validates and
writes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from cst_neuro._distributed import agree, gather, process_group
from cst_neuro.checkpoint import Checkpoint, DataBinding, checked_contents
from cst_neuro.data import (
    ChannelWindows,
    TimeSplit,
    Tokens,
    channel_groups,
    data_fingerprint,
    pad_tokens,
    sample_batch,
)
from cst_neuro.device import resolve_device
from cst_neuro.errors import InputError
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.modes import DataShape, Mode, get_mode
from cst_neuro.model.sobolev import SobolevConfig

__all__ = ["FitConfig", "FitResult", "fit", "partial_path", "validation_loss"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    path: Path
    epochs: int
    best_val: float
    history: list[dict[str, float]]
    stopped: str  # "early-stopping", "max-epochs", "max-minutes" or "cancelled"


class TrainStep(nn.Module):
    """One mode's training loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module, mode: Mode, sobolev: SobolevConfig) -> None:
        super().__init__()
        self.model, self.mode, self.sobolev = model, mode, sobolev

    def forward(self, ctx: Tokens, qry: Tokens, generator: torch.Generator) -> torch.Tensor:
        return self.mode.loss(self.model, ctx, qry, generator, self.sobolev)


def data_shape(windows: ChannelWindows, config: FitConfig) -> DataShape:
    """What the mode sizes its network by."""
    train_values = int(windows.allowed.sum()) * windows.n_channels * windows.value_dim
    return DataShape(windows.value_dim, windows.n_channels, config.window, train_values)


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    mode: Mode,
    windows: ChannelWindows,
    val: np.ndarray,
    config: FitConfig,
    device: torch.device,
) -> float:
    """MSE (normalised units) at validation frames, with context from training frames only."""
    model.eval()
    errors, count = 0.0, 0
    for start in windows.starts(stride=config.window):
        frames = val[start : start + config.window]
        if not frames.any():
            continue
        block = windows.read(start, masked=False)
        observed = windows.observed(block)
        for group in channel_groups(windows.n_channels, config.window, config.max_tokens):
            sel = np.zeros_like(observed)
            sel[:, group] = True
            context = observed & sel & windows.allowed[start : start + config.window, None]
            queries = observed & sel & frames[:, None]
            if not context.any() or not queries.any():
                continue
            ctx = pad_tokens([windows.tokens(block, start, context)], windows.value_dim)
            qry = pad_tokens([windows.tokens(block, start, queries)], windows.value_dim)
            ctx, qry = ctx.to(device), qry.to(device)
            pred = mode.predict(model, mode.context(model, ctx), qry.coords, qry.ids)
            err = ((pred - qry.values) ** 2)[qry.value_mask]
            errors += float(err.sum())
            count += int(err.numel())
    model.train()
    return errors / max(count, 1)


def partial_path(output: Path) -> Path:
    """Where progress checkpoints of ``output`` live while training runs."""
    return output.parent / f".{output.name}.partial"


def fit(
    ds: xr.Dataset,
    output: str | os.PathLike[str],
    *,
    config: FitConfig | None = None,
    device: str = "auto",
    resume: bool = False,
    progress: bool = False,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    overwrite: bool = True,
) -> FitResult:
    """Train a model on ``ds`` and write the best one to ``output`` (a .pt checkpoint).

    ``callback(epoch, history_row)`` runs on rank 0 after each epoch (e.g. a GUI's live
    loss); returning True stops training (``stopped="cancelled"``), still writing the best
    model so far. With ``overwrite=False`` an ``output`` that appears meanwhile (another
    process) is left as is and the run ends in an OutputError.
    """
    config = config or FitConfig()
    output = Path(output)
    mode = get_mode(config.mode)
    with process_group() as (rank, world):
        dev = resolve_device(device)
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.manual_seed(config.seed + rank)
        torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)

        split = TimeSplit.blocks(
            ds.sizes["time"],
            val_fraction=config.val_fraction,
            block_frames=config.val_block,
            seed=config.seed,
        )
        allowed = split.train & np.asarray(ds["valid"].values, bool)
        windows = ChannelWindows(
            ds,
            var=config.var,
            window=config.window,
            patch=config.patch,
            allowed=allowed,
            memory_budget=config.memory_budget,
        )
        fingerprint = data_fingerprint(windows.values)
        model_config = mode.auto_config(data_shape(windows, config), config.model)
        model = mode.build(model_config).to(dev)
        step_module: nn.Module = TrainStep(model, mode, config.sobolev())
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            step_module = DistributedDataParallel(
                step_module, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        rng = np.random.default_rng([config.seed, rank])
        gen = torch.Generator(device=dev).manual_seed(config.seed * 1000 + rank)
        state: dict[str, Any] = {
            "epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": [], "best": None
        }  # fmt: skip
        if resume:
            state = _resume(output, model, optimizer, rng, gen, fingerprint, rank)
        elif partial_path(output).exists() and rank == 0:
            log.warning("%s: starting afresh; pass --resume to continue it", partial_path(output))
        if not split.val.any() and rank == 0:
            log.warning(
                "no validation frames (val_fraction = %s): early stopping and the choice of "
                "the best model use the training loss",
                config.val_fraction,
            )

        starts = np.flatnonzero(
            np.convolve(allowed, np.ones(config.window), "valid") >= 2
        )  # windows with at least two training frames
        if starts.size == 0:
            raise InputError(ds.attrs.get("source_name"), "no window has two training frames")
        deadline = time.monotonic() + 60.0 * config.max_minutes
        stopped = "max-epochs"
        bar = _progress(config, state["epoch"], enabled=progress and rank == 0)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
        while state["epoch"] < config.max_epochs:
            losses: list[float] = []
            for _ in range(config.steps_per_epoch):
                if losses and agree(time.monotonic() > deadline, world):
                    break  # a long epoch ends at the deadline, then is validated
                ctx, qry = (t.to(dev) for t in sample_batch(windows, starts, config, rng))
                optimizer.zero_grad(set_to_none=True)
                if autocast is not None:
                    with autocast:
                        loss = step_module(ctx, qry, gen)
                else:
                    loss = step_module(ctx, qry, gen)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(loss.detach().item())
            state["epoch"] += 1
            train_loss = float(np.mean(losses))
            stop = False
            if rank == 0:
                val = split.val
                val_loss = (
                    validation_loss(model, mode, windows, val, config, dev)
                    if val.any()
                    else train_loss
                )
                stop = _track_best(state, model, train_loss, val_loss, config.patience)
            stop = agree(stop, world)
            out_of_time = agree(time.monotonic() > deadline, world)
            state["rng"] = gather(_rng_state(rng, gen), world)
            cancel = False
            if rank == 0:
                _save_progress(
                    output, model, optimizer, state, mode, model_config, config, fingerprint
                )
                if callback is not None:
                    cancel = bool(callback(state["epoch"], state["history"][-1]))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{state['history'][-1]['train']:.4f}",
                        val=f"{state['history'][-1]['val']:.4f}",
                    )
            if agree(cancel, world):
                stopped = "cancelled"
                break
            if stop:
                stopped = "early-stopping"
                break
            if out_of_time:
                stopped = "max-minutes"
                break
        if bar is not None:
            bar.close()
        if state["best"] is None:  # no epoch finished (max_epochs=0): keep what there is
            state["best"] = _weights(model)
        result = FitResult(output, state["epoch"], state["best_val"], state["history"], stopped)
        if rank == 0:
            binding = DataBinding(
                var=windows.var,
                layout=windows.layout,
                patch=windows.patch,
                n_channels=windows.n_channels,
                fs=windows.fs,
                source_name=str(ds.attrs.get("source_name", "")),
                fingerprint=fingerprint,
                train_frames=split.train,
                val_frames=split.val,
            )
            Checkpoint(
                kind="model",
                mode=mode.name,
                model_config=model_config,
                fit_config=config,
                state_dict=state["best"],
                normalizer=windows.normalizer,
                data=binding,
                history=state["history"],
                best_val=state["best_val"],
            ).save(output, replace=overwrite)
            partial_path(output).unlink(missing_ok=True)
        return result


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _track_best(
    state: dict[str, Any], model: nn.Module, train_loss: float, val_loss: float, patience: int
) -> bool:
    """Record an epoch; keep the best weights; True once ``patience`` epochs did not improve."""
    state["history"].append({"epoch": state["epoch"], "train": train_loss, "val": val_loss})
    if val_loss < state["best_val"]:
        state["best_val"], state["bad_epochs"] = val_loss, 0
        state["best"] = _weights(model)
    else:
        state["bad_epochs"] += 1
    return bool(state["bad_epochs"] >= patience)


def _rng_state(rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {
        "numpy": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "sampler": gen.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any], rng: np.random.Generator, gen: torch.Generator) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    gen.set_state(state["sampler"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_progress(
    output: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    mode: Mode,
    model_config: Any,
    config: FitConfig,
    fingerprint: str,
) -> None:
    """The progress checkpoint `resume` continues from, beside the output."""
    Checkpoint(
        kind="progress",
        mode=mode.name,
        model_config=model_config,
        fit_config=config,
        state_dict=model.state_dict(),
        optimizer=optimizer.state_dict(),
        train_state=state,
        data_fingerprint=fingerprint,
    ).save(partial_path(output))


def _resume(
    output: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    gen: torch.Generator,
    fingerprint: str,
    rank: int,
) -> dict[str, Any]:
    path = partial_path(output)
    if not path.exists():
        raise InputError(output, "nothing to resume: no unfinished training for this output")
    saved = Checkpoint.load(path)
    if saved.kind != "progress" or saved.train_state is None or saved.optimizer is None:
        raise InputError(path, "is not an unfinished training checkpoint")
    if saved.data_fingerprint != fingerprint:
        raise InputError(path, "was trained on different data than this store; cannot resume")
    with checked_contents(path):
        model.load_state_dict(saved.state_dict)
        optimizer.load_state_dict(saved.optimizer)
        state = dict(saved.train_state)
        _set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)], rng, gen)
    log.info("resuming %s at epoch %d", output, state["epoch"])
    return state


def _progress(config: FitConfig, done: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.max_epochs, initial=done, desc="fit", unit="epoch")
