"""``pretrain``: a calcium prior, learned once from a corpus, that every fit starts from.

The loop trains a transferable CST (`model.cst`, no per-ROI parameters) on windows of the
corpus (`corpus.Corpus`): synthetic families plus any real recordings given, each observed
at random decimation factors with frames missing and ROIs hidden, the true values at the
hidden times as targets. Each step's batch is a pure function of (seed, step, rank), so a
run is reproducible and ``resume`` continues exactly: progress checkpoints (weights,
optimiser, best weights, history) go to ``.NAME.partial`` beside the output every
``checkpoint_every`` steps. Validation scores fixed windows against linear interpolation
of the same observations (`validation`); the best weights are written as a checkpoint of
kind ``prior``. Budgeted (``max_minutes``, checked before each step), with a progress bar,
on the device and in the precision of `fit`, and data-parallel under ``torchrun``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cst_neuro._distributed import agree, process_group
from cst_neuro.checkpoint import Checkpoint, checked_contents
from cst_neuro.data import CHANNEL_FEATURES, Tokens
from cst_neuro.device import autocast, resolve_device
from cst_neuro.errors import InputError
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.modes import DataShape, get_mode
from cst_neuro.pretrain.corpus import Corpus, Source, real_sources
from cst_neuro.train import TrainStep, optimise, partial_path

log = logging.getLogger(__name__)

VALIDATION_SEED = 10**6  # validation windows come from their own stream of the seed


@dataclass
class PretrainConfig:
    """Settings of a pretraining run; ``model`` overrides the prior's network settings."""

    seed: int = 0
    max_steps: int = 20_000
    max_minutes: float = 60.0
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 200
    window: int = 32
    max_channels: int = 48
    max_queries: int = 512
    real_share: float = 0.25  # of the windows, when real recordings are given
    sobolev_k: int = 2
    sobolev_p: float = 2.0
    sobolev_weight: float = 1e-2
    n_collocation: int = 128
    validate_every: int = 250
    n_validation: int = 96  # fixed validation windows
    model: dict[str, Any] = field(default_factory=dict)

    def network(self) -> dict[str, Any]:
        """The prior's network settings: transferable (no per-ROI tables), small and fast."""
        shape = DataShape(value_dim=1, n_channels=0, window=self.window, train_values=0)
        base = get_mode("cst").defaults(shape)
        base.update(
            n_ids=0,
            channel_gain=False,
            d_model=64,
            n_heads=4,
            n_layers=2,
            n_decoder_layers=2,
            d_ff=128,
            n_fourier=32,
            readout_rank=8,
            learn_gain=False,  # amplitudes pass through; the readout and head denoise
            dropout=0.0,
        )
        return {**base, **self.model}

    def check(self) -> None:
        """InputError for a setting that cannot run."""
        for name in ("max_steps", "batch_size", "window", "max_channels", "max_queries"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(None, f"pretrain setting {name} must be a positive integer")
        if not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise InputError(None, "pretrain setting max_minutes must be a positive number")
        if not 0.0 <= self.real_share <= 1.0:
            raise InputError(None, "pretrain setting real_share must be in [0, 1]")


@dataclass
class PretrainResult:
    path: Path
    steps: int
    best_val: float  # model MSE / linear interpolation MSE on the validation windows
    history: list[dict[str, float]]
    stopped: str  # "max-steps" or "max-minutes"
    seconds: float


def batch_at(
    config: PretrainConfig, sources: list[Source], step: int, rank: int
) -> tuple[Tokens, Tokens]:
    """The training batch of ``step`` on ``rank``: a pure function of the seed."""
    rng = np.random.default_rng([config.seed, step, rank])
    return corpus_for(config, sources, rng).batch(config.batch_size)


def corpus_for(config: PretrainConfig, sources: list[Source], rng: np.random.Generator) -> Corpus:
    """The corpus a pretraining run draws its windows from, with the run's sizes."""
    return Corpus(
        rng,
        real=sources,
        real_share=config.real_share,
        window=config.window,
        max_channels=config.max_channels,
        max_queries=config.max_queries,
    )


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Linear warm-up, then a cosine to a tenth of ``lr`` at ``max_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    done = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def pretrain(
    output: str | os.PathLike[str],
    *,
    config: PretrainConfig | None = None,
    recordings: list[str | os.PathLike[str]] | None = None,
    device: str = "auto",
    precision: str = "auto",
    resume: bool = False,
    progress: bool = False,
) -> PretrainResult:
    """Pretrain a prior on synthetic families plus ``recordings``; write it to ``output``."""
    from cst_neuro.pretrain.validation import ValidationSet

    config = config or PretrainConfig()
    config.check()
    output = Path(output)
    sources = [source for path in recordings or [] for source in real_sources(path)]
    mode = get_mode("cst")
    network = mode.make_config(config.network())
    started = time.monotonic()
    with process_group() as (rank, world):
        dev = resolve_device(device)
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.manual_seed(config.seed)
        torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)
        model = mode.build(network).to(dev)
        sobolev = FitConfig(
            sobolev_k=config.sobolev_k,
            sobolev_p=config.sobolev_p,
            sobolev_weight=config.sobolev_weight,
            n_collocation=config.n_collocation,
        ).sobolev(step=1.0)
        step_module: nn.Module = TrainStep(model, mode, sobolev)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            step_module = DistributedDataParallel(
                step_module, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        validation = ValidationSet.build(config, sources) if rank == 0 else None
        state: dict[str, Any] = {"step": 0, "best_val": math.inf, "best": None, "history": []}
        if resume:
            state = _resume(output, model, optimizer)
        cast = autocast(dev, precision)
        gen = torch.Generator(device=dev)
        deadline = time.monotonic() + 60.0 * config.max_minutes
        bar = _progress(config, state["step"], enabled=progress and rank == 0)
        stopped, losses = "max-steps", []
        while state["step"] < config.max_steps:
            if agree(time.monotonic() > deadline, world):
                stopped = "max-minutes"
                break
            step = state["step"]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            seed = (config.seed * 1_000_003 + step) * 97 + rank  # a step's randomness is its own
            gen.manual_seed(seed)
            torch.manual_seed(seed)  # input noise and dropout
            ctx, qry = (t.to(dev) for t in batch_at(config, sources, step, rank))
            losses.append(optimise(step_module, model, optimizer, ctx, qry, gen, cast))
            state["step"] = step + 1
            if bar is not None:
                bar.update(1)
            due = state["step"] % config.validate_every == 0 or state["step"] == config.max_steps
            if due and validation is not None:
                _validate(state, model, validation, float(np.mean(losses)), dev, bar)
                losses = []
                _save(output, "progress", model, network, config, state, optimizer, sources)
        if validation is not None and (not state["history"] or losses):
            _validate(state, model, validation, float(np.mean(losses or [math.nan])), dev, bar)
        if bar is not None:
            bar.close()
        seconds = time.monotonic() - started
        if rank == 0:
            state["seconds"] = seconds
            _save(output, "prior", model, network, config, state, None, sources)
            partial_path(output).unlink(missing_ok=True)
    return PretrainResult(
        output, state["step"], state["best_val"], state["history"], stopped, seconds
    )


def _validate(
    state: dict[str, Any],
    model: nn.Module,
    validation: Any,
    train_loss: float,
    dev: torch.device,
    bar: Any,
) -> None:
    scores = validation.score(model, dev)
    row = {"step": state["step"], "train": train_loss, **scores}
    state["history"].append(row)
    if scores["ratio"] < state["best_val"]:
        state["best_val"] = scores["ratio"]
        state["best"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if bar is not None:
        bar.set_postfix(loss=f"{train_loss:.4f}", val_vs_linear=f"{scores['ratio']:.3f}")
    log.info("step %d: %s", state["step"], row)


def _save(
    output: Path,
    kind: str,
    model: nn.Module,
    network: Any,
    config: PretrainConfig,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None,
    sources: list[Source],
) -> None:
    """The prior (best weights) or a progress checkpoint (everything `resume` needs)."""
    weights = state["best"] if kind == "prior" and state["best"] is not None else model.state_dict()
    info = {
        "pretrain": dataclasses.asdict(config),
        "real_recordings": sorted({s.name for s in sources}),
        "steps": state["step"],
        "features": list(CHANNEL_FEATURES),
    }
    if kind == "prior":
        info["seconds"] = round(float(state.get("seconds", 0.0)), 1)
    Checkpoint(
        kind=kind,  # type: ignore[arg-type]
        mode="cst",
        model_config=network,
        fit_config=FitConfig(window=config.window),
        state_dict=weights,
        history=state["history"],
        best_val=state["best_val"],
        optimizer=None if optimizer is None else optimizer.state_dict(),
        train_state=None if kind == "prior" else state,
        info=info,
    ).save(output if kind == "prior" else partial_path(output))


def _resume(output: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    path = partial_path(output)
    if not path.exists():
        raise InputError(output, "nothing to resume: no unfinished pretraining for this output")
    saved = Checkpoint.load(path)
    if saved.kind != "progress" or saved.train_state is None or saved.optimizer is None:
        raise InputError(path, "is not an unfinished pretraining checkpoint")
    with checked_contents(path):
        model.load_state_dict(saved.state_dict)
        optimizer.load_state_dict(saved.optimizer)
        state = dict(saved.train_state)
    log.info("resuming %s at step %d", output, state["step"])
    return state


def _progress(config: PretrainConfig, done: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.max_steps, initial=done, desc="pretrain", unit="step")
