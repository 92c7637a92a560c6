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
writes. A little over 500 lines: the loop, its resume and its budget share one state, and
resuming exactly is easier to check when they are read together.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from cst_neuro._distributed import agree, gather, process_group
from cst_neuro.atomic import check_output
from cst_neuro.blend import BlendSummary, choose_blend
from cst_neuro.checkpoint import CHECKPOINT, Checkpoint, DataBinding, checked_contents
from cst_neuro.data import (
    ChannelWindows,
    TimeSplit,
    Tokens,
    channel_groups,
    data_fingerprint,
    sample_batch,
)
from cst_neuro.device import autocast, resolve_device
from cst_neuro.errors import InputError
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.cst import CST, CSTConfig
from cst_neuro.model.modes import DataShape, Mode, get_mode
from cst_neuro.model.sobolev import SobolevConfig
from cst_neuro.prior import bound_config, load_prior, prior_name, start_from
from cst_neuro.prior_gate import Gain, compare, frame_errors

__all__ = ["FitConfig", "FitResult", "fit", "partial_path"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    path: Path
    epochs: int
    best_val: float
    history: list[dict[str, float]]
    stopped: str  # "early-stopping", "max-epochs", "max-minutes" or "cancelled"
    blend: BlendSummary | None = None  # the model against linear interpolation on validation
    prior: str = "none"  # what the fit started from
    best_epoch: int = 0  # the epoch whose weights were kept; 0: the starting weights (the prior)
    gain: Gain | None = None  # fine-tuning against the prior on validation, when it was weighed


class TrainStep(nn.Module):
    """One mode's training loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module, mode: Mode, sobolev: SobolevConfig) -> None:
        super().__init__()
        self.model, self.mode, self.sobolev = model, mode, sobolev

    def forward(self, ctx: Tokens, qry: Tokens, generator: torch.Generator) -> torch.Tensor:
        return self.mode.loss(self.model, ctx, qry, generator, self.sobolev)


def optimise(
    step_module: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: Tokens,
    qry: Tokens,
    generator: torch.Generator,
    cast: AbstractContextManager[object],
) -> float:
    """One optimiser step on a batch (forward under ``cast``, gradients clipped at 1): its loss."""
    optimizer.zero_grad(set_to_none=True)
    with cast:
        loss = step_module(ctx, qry, generator)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach().item())


def data_shape(windows: ChannelWindows, config: FitConfig) -> DataShape:
    """What the mode sizes its network by."""
    train_values = int(windows.allowed.sum()) * windows.n_channels * windows.value_dim
    return DataShape(windows.value_dim, windows.n_channels, config.window, train_values)


def validation_batches(
    windows: ChannelWindows, val: np.ndarray, config: FitConfig
) -> Iterator[tuple[Tokens, Tokens]]:
    """(context, queries) of the windows holding validation frames, per channel group:
    queries at the validation frames, context from the training frames only. Windows
    beyond ``config.val_tokens`` are thinned to evenly spaced ones."""
    w = config.window
    starts = np.array([s for s in windows.starts(stride=w) if val[s : s + w].any()], int)
    keep = max(1, config.val_tokens // (w * windows.n_channels))
    if starts.size > keep:
        starts = starts[np.unique(np.linspace(0, starts.size - 1, keep).round().astype(int))]
    for start in starts:
        frames = val[start : start + w]
        block = windows.read(start, masked=False)
        observed = windows.observed(block)
        for group in channel_groups(windows.n_channels, config.window, config.max_tokens):
            sel = np.zeros_like(observed)
            sel[:, group] = True
            context = observed & sel & windows.allowed[start : start + w, None]
            queries = observed & sel & frames[:, None]
            if context.any() and queries.any():
                yield (
                    windows.batch([windows.tokens(block, start, context)]),
                    windows.batch([windows.tokens(block, start, queries)]),
                )


@torch.no_grad()
def validation_predictions(
    model: nn.Module,
    mode: Mode,
    batches: list[tuple[Tokens, Tokens]],
    device: torch.device,
) -> list[torch.Tensor]:
    """The model's predictions (1, Q, V) at each batch's queries, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for ctx, qry in batches:
        ctx, qry = ctx.to(device), qry.to(device)
        out.append(mode.predict(model, mode.context(model, ctx), qry.coords, qry.ids).float())
    model.train(was_training)
    return out


def partial_path(output: Path) -> Path:
    """Where progress checkpoints of ``output`` live while training runs."""
    return output.parent / f".{output.name}.partial"


def fit(
    ds: xr.Dataset,
    output: str | os.PathLike[str],
    *,
    config: FitConfig | None = None,
    device: str = "auto",
    precision: str = "auto",
    resume: bool = False,
    progress: bool = False,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    overwrite: bool = True,
) -> FitResult:
    """Train a model on ``ds`` and write the best one to ``output`` (a .pt checkpoint).

    ``precision`` is ``auto`` (bf16 autocast where the hardware multiplies bf16: CUDA GPUs,
    CPUs with AVX-512 BF16 or AMX; fp32 elsewhere), ``fp32`` or ``bf16``.

    ``callback(epoch, history_row)`` runs on rank 0 after each epoch (e.g. a GUI's live
    loss); returning True stops training (``stopped="cancelled"``), still writing the best
    model so far. With ``overwrite=False`` an ``output`` that appears meanwhile (another
    process) is left as is and the run ends in an OutputError.
    """
    config = (config or FitConfig()).resolved()
    assert config.prior is not None and config.lr is not None and config.val_block is not None
    output = check_output(output, CHECKPOINT, overwrite=overwrite)  # only a checkpoint is replaced
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
            frames_per_unit=mode.frames_per_unit(config.window),
            memory_budget=config.memory_budget,
        )
        if windows.observed_samples() < 2:
            raise InputError(
                ds.attrs.get("source_name"),
                f"the training frames hold {windows.observed_samples()} finite samples of "
                f"{windows.var}; nothing to fit",
            )
        fingerprint = data_fingerprint(windows.values)
        prior = config.prior
        model, model_config = _initial_model(mode, windows, config, prior)
        model = model.to(dev)
        val_batches = list(validation_batches(windows, split.val, config)) if rank == 0 else []
        if rank == 0 and not val_batches:
            log.warning(
                "no validation frames (val_fraction = %s): early stopping and the choice of "
                "the best model use the training loss",
                config.val_fraction,
            )
        run = _Run(
            mode=mode,
            model=model,
            config=config,
            windows=windows,
            device=dev,
            rank=rank,
            world=world,
            val_batches=val_batches,
            lr=config.lr,
        )
        if resume:
            run.state = _resume(output, model, run.optimizer, run.rng, run.gen, fingerprint, rank)
        elif rank == 0:
            if (unfinished := partial_path(output)).exists():
                log.warning("%s: starting afresh; pass --resume to continue it", unfinished)
            if prior != "none" and config.max_epochs > 0:
                run.score_start()

        def save_progress(state: dict[str, Any]) -> None:
            _save_progress(
                output, model, run.optimizer, state, mode, model_config, config, fingerprint
            )

        stopped = run.train(precision, save_progress, callback, progress)
        state = run.state
        unscored = state["best"] is None  # no epoch finished (max_epochs=0): keep what there is
        if unscored:
            state["best"] = _weights(model)
        blend = gain = None
        if rank == 0:
            model.load_state_dict(state["best"])
            if state.get("start") is not None and state["best_epoch"] > 0:
                gain = run.gate_fine_tuning()
            if isinstance(model, CST) and val_batches:
                blend = choose_blend(model, val_batches, run.predict)
            if unscored and val_batches:  # the unblended model's error, as after an epoch
                state["best_val"] = blend.model if blend else run.validation_loss(math.inf)
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
            info: dict[str, Any] = {"prior": prior_name(prior), "best_epoch": state["best_epoch"]}
            if blend is not None:
                info["blend"] = blend.to_dict()
            if gain is not None:
                info["fine_tuning"] = gain.to_dict()
            Checkpoint(
                kind="model",
                mode=mode.name,
                model_config=model_config,
                fit_config=config,
                state_dict=_weights(model),
                normalizer=windows.normalizer,
                features=windows.features,
                data=binding,
                history=state["history"],
                best_val=state["best_val"],
                info=info,
            ).save(output, replace=overwrite)
            partial_path(output).unlink(missing_ok=True)
        return FitResult(
            output,
            state["epoch"],
            state["best_val"],
            state["history"],
            stopped,
            blend,
            prior_name(prior),
            state["best_epoch"],
            gain,
        )


def _initial_model(
    mode: Mode, windows: ChannelWindows, config: FitConfig, prior: str
) -> tuple[nn.Module, Any]:
    """A fresh network sized for the data, or the prior bound to this recording."""
    loaded = load_prior(prior)
    if loaded is None:
        model_config = mode.auto_config(data_shape(windows, config), config.model)
        return mode.build(model_config), model_config
    where = prior_name(prior)
    network = loaded.model_config
    if isinstance(network, CSTConfig) and network.window != config.window:
        raise InputError(
            where,
            f"the prior's windows are {network.window} frames, this fit's "
            f"{config.window}: drop window, or set prior = none",
        )
    try:
        model_config = bound_config(loaded, windows.n_channels, config.model)
    except InputError as e:
        raise InputError(where, e.problem) from None
    model = mode.build(model_config)
    start_from(loaded, model, where)
    return model, model_config


class _Run:
    """One fit's training state and loop: epochs of steps, validation, early stopping."""

    def __init__(
        self,
        *,
        mode: Mode,
        model: nn.Module,
        config: FitConfig,
        windows: ChannelWindows,
        device: torch.device,
        rank: int,
        world: int,
        val_batches: list[tuple[Tokens, Tokens]],
        lr: float,
    ) -> None:
        self.mode, self.model, self.config, self.windows = mode, model, config, windows
        self.device, self.rank, self.world, self.val_batches = device, rank, world, val_batches
        sobolev = config.sobolev(step=1.0 / windows.frames_per_unit)
        self.step_module: nn.Module = TrainStep(model, mode, sobolev)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=config.weight_decay
        )
        self.rng = np.random.default_rng([config.seed, rank])
        self.gen = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank)
        self.state: dict[str, Any] = {
            "epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": [], "best": None,
            "best_epoch": 0,
        }  # fmt: skip
        allowed = windows.allowed
        self.starts = np.flatnonzero(
            np.convolve(allowed, np.ones(config.window), "valid") >= 2
        )  # windows with at least two training frames
        if self.starts.size == 0:
            raise InputError(None, "no window of the recording has two training frames")

    def predict(self, model: nn.Module, batches: list[tuple[Tokens, Tokens]]) -> list[Tensor]:
        return validation_predictions(model, self.mode, batches, self.device)

    def validation_loss(self, train_loss: float) -> float:
        if not self.val_batches:
            return train_loss
        errors, count = 0.0, 0
        for pred, (_, qry) in zip(
            self.predict(self.model, self.val_batches), self.val_batches, strict=True
        ):
            err = ((pred.cpu() - qry.values) ** 2)[qry.value_mask]
            errors += float(err.sum())
            count += int(err.numel())
        return errors / max(count, 1)

    def score_start(self) -> None:
        """The starting weights (a prior) as epoch 0 of early stopping: fine-tuning keeps
        them unless an epoch beats their validation error (`gate_fine_tuning` then asks by
        how much), so a short fit on a recording unlike the corpus cannot end worse than
        its zero-shot start."""
        if self.val_batches:
            self.state["best_val"] = self.validation_loss(math.inf)
            self.state["best"] = self.state["start"] = _weights(self.model)

    def gate_fine_tuning(self) -> Gain:
        """Weigh the best fine-tuned weights (loaded) against the prior's on the validation
        frames; go back to the prior unless the gain exceeds the noise (`prior_gate`)."""
        tuned = frame_errors(self.predict(self.model, self.val_batches), self.val_batches)
        best = _weights(self.model)
        self.model.load_state_dict(self.state["start"])
        prior = frame_errors(self.predict(self.model, self.val_batches), self.val_batches)
        gain = compare(prior, tuned)
        if gain.significant:
            self.model.load_state_dict(best)
            log.info("%s: kept the fine-tuned weights", gain.line())
        else:
            self.state["best_val"], self.state["best_epoch"] = gain.prior, 0
            log.info("%s: within the noise, kept the prior", gain.line())
        return gain

    def train(
        self,
        precision: str,
        save_progress: Callable[[dict[str, Any]], None],
        callback: Callable[[int, dict[str, float]], bool | None] | None,
        progress: bool,
    ) -> str:
        """Epochs until max_epochs, early stopping, the deadline or a cancel: why it stopped."""
        config, state, world = self.config, self.state, self.world
        deadline = time.monotonic() + 60.0 * config.max_minutes
        bar = _progress(config, state["epoch"], enabled=progress and self.rank == 0)
        cast = autocast(self.device, precision)
        stopped = "max-epochs"
        while state["epoch"] < config.max_epochs:
            losses: list[float] = []
            for _ in range(config.steps_per_epoch):
                if losses and agree(time.monotonic() > deadline, world):
                    break  # a long epoch ends at the deadline, then is validated
                batch = sample_batch(self.windows, self.starts, config, self.rng)
                ctx, qry = (t.to(self.device) for t in batch)
                losses.append(
                    optimise(self.step_module, self.model, self.optimizer, ctx, qry, self.gen, cast)
                )
            state["epoch"] += 1
            train_loss = float(np.mean(losses))
            stop = False
            if self.rank == 0:
                val_loss = self.validation_loss(train_loss)
                stop = _track_best(state, self.model, train_loss, val_loss, config.patience)
            stop = agree(stop, world)
            out_of_time = agree(time.monotonic() > deadline, world)
            state["rng"] = gather(_rng_state(self.rng, self.gen), world)
            cancel = False
            if self.rank == 0:
                save_progress(state)
                if callback is not None:
                    cancel = bool(callback(state["epoch"], state["history"][-1]))
                if bar is not None:
                    bar.update(1)
                    row = state["history"][-1]
                    bar.set_postfix(loss=f"{row['train']:.4f}", val=f"{row['val']:.4f}")
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
        return stopped


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _track_best(
    state: dict[str, Any], model: nn.Module, train_loss: float, val_loss: float, patience: int
) -> bool:
    """Record an epoch; keep the best weights; True once ``patience`` epochs did not improve."""
    state["history"].append({"epoch": state["epoch"], "train": train_loss, "val": val_loss})
    if val_loss < state["best_val"]:
        state["best_val"], state["bad_epochs"] = val_loss, 0
        state["best"], state["best_epoch"] = _weights(model), state["epoch"]
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
        state = {"best_epoch": 0, **saved.train_state}  # runs saved before best_epoch existed
        _set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)], rng, gen)
    log.info("resuming %s at epoch %d", output, state["epoch"])
    return state


def _progress(config: FitConfig, done: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.max_epochs, initial=done, desc="fit", unit="epoch")
