"""Fitting a CST to a Recording: plain PyTorch, seeded, resumable, budgeted, optionally DDP.

The loop samples windows of the training frames (``cst_neuro.data``), holds out a share
of each window's frames as queries, and minimises the mode's loss:

- ``cst``: MSE at the held-out queries + Sobolev penalties on exact coordinate
  derivatives at random real-valued collocation times (``cst_neuro.model.sobolev``);
- ``transformer``: the paper's network with plain MSE at real and held-out tokens;
- ``paper``: the paper's network and the released loss (data term on real tokens,
  input-Jacobian penalty on dummy tokens), for parity.

Validation uses blocks of frames that training never sees, as queries against context
from the training frames (no leakage); early stopping keeps the best weights. Progress
checkpoints (model, optimiser, every RNG state) are written atomically next to the output
as ``.NAME.partial`` after each epoch, so ``resume=True`` continues exactly where a killed
run stopped; the final model is written to the output only when training ends.
Under ``torchrun`` (WORLD_SIZE > 1) gradients are averaged across processes with
``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs); rank 0 validates and writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from cst_neuro.checkpoint import (
    data_fingerprint,
    load_checkpoint,
    model_contents,
    resolve_device,
    save_checkpoint,
)
from cst_neuro.data import MEMORY_BUDGET, ChannelWindows, Normalizer, TimeSplit, Tokens, pad_tokens
from cst_neuro.errors import InputError
from cst_neuro.model import (
    CST,
    CSTConfig,
    SobolevConfig,
    add_dummy_tokens,
    data_loss,
    input_jacobian_loss,
    sample_collocation,
    sobolev_loss,
)
from cst_neuro.tomlfile import read_toml

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Training settings; ``model`` holds CSTConfig overrides (sizes adapt to the data)."""

    mode: str = "cst"
    var: str | None = None  # dff for traces, grid for grids (auto)
    window: int = 32  # frames per window: the unit of training and inference
    patch: int = 4  # p for p×p grid patches
    max_tokens: int = 8192  # observed tokens per window; more channels are subsampled
    batch_size: int = 4
    query_fraction: float = 0.25  # share of a window's frames held out as training queries
    lr: float = 1e-3
    weight_decay: float = 1e-2
    max_epochs: int = 200
    steps_per_epoch: int = 50
    patience: int = 10  # epochs without validation improvement before stopping
    max_minutes: float = 10.0  # wall-clock budget; the epoch under way ends at it
    val_fraction: float = 0.1
    val_block: int = 4  # frames per validation block
    seed: int = 0
    sobolev_k: int = 2
    sobolev_p: float = 2.0
    sobolev_weight: float = 1e-2
    n_collocation: int = 256
    memory_budget: int = MEMORY_BUDGET  # bytes of the modelled variable held in RAM; more streams
    model: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> FitConfig:
        """Read a TOML file: top-level keys are FitConfig fields, ``[model]`` CSTConfig ones."""
        return cls.from_dict({**read_toml(path), **overrides}, source=Path(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: Any = None) -> FitConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise InputError(source, f"unknown setting(s) {', '.join(unknown)}")
        if not isinstance(raw.get("model", {}), dict):
            raise InputError(source, "[model] must be a table of CSTConfig settings")
        model_names = {f.name for f in dataclasses.fields(CSTConfig)}
        bad_model = sorted(set(raw.get("model", {})) - model_names)
        if bad_model:
            raise InputError(source, f"unknown [model] setting(s) {', '.join(bad_model)}")
        config = cls(**raw)
        if config.mode not in ("cst", "transformer", "paper"):
            raise InputError(source, f"mode must be cst, transformer or paper, got {config.mode!r}")
        _check_settings(config, source)
        return config


# setting: (kind, lowest, highest allowed), both inclusive; None = unbounded
_LIMITS: dict[str, tuple[type, float | None, float | None]] = {
    "window": (int, 2, None),
    "patch": (int, 1, None),
    "max_tokens": (int, 1, None),
    "batch_size": (int, 1, None),
    "max_epochs": (int, 0, None),
    "steps_per_epoch": (int, 1, None),
    "patience": (int, 1, None),
    "val_block": (int, 1, None),
    "seed": (int, 0, None),
    "sobolev_k": (int, 0, None),
    "n_collocation": (int, 1, None),
    "memory_budget": (int, 0, None),
    "query_fraction": (float, 1e-6, 1.0),
    "lr": (float, 1e-12, None),
    "weight_decay": (float, 0.0, None),
    "max_minutes": (float, 0.0, None),
    "val_fraction": (float, 0.0, 0.9),
    "sobolev_p": (float, 1.0, None),
    "sobolev_weight": (float, 0.0, None),
}


def _check_settings(config: FitConfig, source: Any) -> None:
    """InputError naming ``source`` for a setting of the wrong type or out of range."""
    for name, (kind, low, high) in _LIMITS.items():
        value = getattr(config, name)
        ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            raise InputError(source, f"setting {name} = {value!r} is not a {kind.__name__}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise InputError(source, f"setting {name} = {value!r} must be {bounds}")
    if config.var is not None and not isinstance(config.var, str):
        raise InputError(source, f"setting var = {config.var!r} is not a variable name")
    try:  # the data decides n_ids later; one stands in for it here
        CSTConfig(**{"mode": config.mode, "n_ids": 1, **config.model})
    except (TypeError, ValueError) as e:
        raise InputError(source, f"[model]: {e}") from e


@dataclass
class FitResult:
    path: Path
    epochs: int
    best_val: float
    history: list[dict[str, float]]
    stopped: str  # "early-stopping", "max-epochs", "max-minutes" or "cancelled"


def auto_model_config(windows: ChannelWindows, config: FitConfig) -> CSTConfig:
    """A model sized for the data: small recordings get small, regularised models."""
    train_values = int(windows.allowed.sum()) * windows.n_channels * windows.value_dim
    if train_values < 200_000:
        size = {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64}
    elif train_values < 2_000_000:
        size = {"d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 128}
    else:
        size = {"d_model": 128, "n_heads": 4, "n_layers": 3, "d_ff": 256}
    base = {
        "mode": config.mode,
        "value_dim": windows.value_dim,
        "coord_dims": 3,
        "n_ids": windows.n_channels,
        "dropout": 0.1,
        "input_noise": 0.1 if config.mode == "paper" else 0.05,
        "n_latent_times": max(4, config.window // 2),
        "latents_per_time": 4,
        "interpolant": "linear" if config.mode == "cst" else "none",
        "channel_gain": config.mode == "cst",  # Allen fit validation 0.831 vs 0.845 (15 epochs)
        **size,
    }
    return CSTConfig(**{**base, **config.model})


class TrainStep(nn.Module):
    """One mode's training loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: CST, config: FitConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.sobolev = SobolevConfig(
            k=config.sobolev_k,
            p=config.sobolev_p,
            weights=config.sobolev_weight,
            step=1.0 / config.window,
            n_collocation=config.n_collocation,
        )

    def forward(self, ctx: Tokens, qry: Tokens, generator: torch.Generator) -> torch.Tensor:
        model, mode = self.model, self.config.mode
        target_mask = qry.mask & qry.value_mask.all(-1)
        if mode == "cst":
            context = model.encode(ctx.values, ctx.coords, ctx.ids, ctx.mask)
            points, point_ids = sample_collocation(
                ctx.coords,
                self.sobolev.n_collocation,
                mask=ctx.mask,
                ids=ctx.ids,
                generator=generator,
            )
            return sobolev_loss(
                model,
                context,
                qry.coords,
                qry.values,
                points,
                query_ids=qry.ids,
                target_mask=target_mask,
                collocation_ids=point_ids,
                config=self.sobolev,
            ).total
        tokens = add_dummy_tokens(
            ctx.values, ctx.coords, qry.coords, mask=ctx.mask, ids=ctx.ids, dummy_ids=qry.ids
        )
        if mode == "paper":
            return input_jacobian_loss(
                model,
                tokens.values,
                tokens.coords,
                tokens.is_real,
                ids=tokens.ids,
                mask=tokens.mask,
            ).total
        pred = model.forward_tokens(tokens.values, tokens.coords, tokens.ids, tokens.mask)
        n = ctx.values.shape[1]
        real = data_loss(pred[:, :n], ctx.values, ctx.mask & ctx.value_mask.all(-1))
        return real + data_loss(pred[:, n:], qry.values, target_mask)


def predict_tokens(
    model: CST, ctx: Tokens, coords: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Predictions (B, Q, V) at query coordinates from a context, in any mode."""
    return model(ctx.values, ctx.coords, ctx.ids, ctx.mask, query_coords=coords, query_ids=ids)


def channel_groups(n_channels: int, window: int, max_tokens: int) -> list[np.ndarray]:
    """Channels split into groups small enough that a window stays within max_tokens."""
    per_group = max(1, max_tokens // window)
    return [np.arange(s, min(s + per_group, n_channels)) for s in range(0, n_channels, per_group)]


def sample_batch(
    windows: ChannelWindows, starts: np.ndarray, config: FitConfig, rng: np.random.Generator
) -> tuple[Tokens, Tokens]:
    """A training batch: context tokens and held-out query tokens from random windows."""
    ctx_parts, qry_parts = [], []
    per_group = max(1, config.max_tokens // config.window)
    while len(ctx_parts) < config.batch_size:
        start = int(rng.choice(starts))
        block = windows.read(start)  # (W, C, V)
        keep = np.zeros(block.shape[:2], bool)
        channels = (
            rng.choice(windows.n_channels, per_group, replace=False)
            if windows.n_channels > per_group
            else np.arange(windows.n_channels)
        )
        keep[:, channels] = True
        observed = windows.observed(block) & keep
        frames = np.flatnonzero(observed.any(1))
        if frames.size < 2:
            continue
        held = held_out_frames(frames, block.shape[0], config, rng)
        ctx_parts.append(windows.tokens(block, start, observed & ~held[:, None]))
        qry_parts.append(windows.tokens(block, start, observed & held[:, None]))
    return pad_tokens(ctx_parts, windows.value_dim), pad_tokens(qry_parts, windows.value_dim)


def held_out_frames(
    frames: np.ndarray, window: int, config: FitConfig, rng: np.random.Generator
) -> np.ndarray:
    """Frames to hold out as queries: random runs of 1..val_block observed frames.

    Single frames teach interpolation between neighbours (upsampling); longer runs teach
    in-filling of gaps like the validation blocks.
    """
    n_query = max(1, round(config.query_fraction * frames.size))
    held = np.zeros(window, bool)
    while held[frames].sum() < n_query:
        start = int(rng.choice(frames))
        held[start : start + int(rng.integers(1, config.val_block + 1))] = True
    if held[frames].all():  # keep some context
        held[frames[0]] = False
    return held


@torch.no_grad()
def validation_loss(
    model: CST, windows: ChannelWindows, val: np.ndarray, config: FitConfig, device: torch.device
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
            pred = predict_tokens(model, ctx, qry.coords, qry.ids)
            err = ((pred - qry.values) ** 2)[qry.value_mask]
            errors += float(err.sum())
            count += int(err.numel())
    model.train()
    return errors / max(count, 1)


@contextmanager
def _process_group() -> Iterator[tuple[int, int]]:
    """(rank, world size), starting torch.distributed under torchrun; a process group
    started here ends here (left to interpreter exit, gloo's threads can abort a rank:
    "terminate called without an active exception")."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), world
    finally:
        if started:
            dist.destroy_process_group()


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
    with _process_group() as (rank, world):
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
        model_config = auto_model_config(windows, config)
        model = CST(model_config).to(dev)
        step_module: nn.Module = TrainStep(model, config)
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
        state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": [], "best": None}
        if resume:
            state = _resume(output, model, optimizer, rng, gen, fingerprint, rank)
        elif partial_path(output).exists() and rank == 0:
            log.warning("%s: starting afresh; pass --resume to continue it", partial_path(output))

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
            losses = []
            for _ in range(config.steps_per_epoch):
                if losses and _agree(time.monotonic() > deadline, world):
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
            stop = _end_of_epoch(
                state, model, windows, split.val, config, dev, float(np.mean(losses)), rank, world
            )
            out_of_time = _agree(time.monotonic() > deadline, world)
            state["rng"] = _gather_rng(_rng_state(rng, gen), world)
            cancel = False
            if rank == 0:
                _save_progress(output, model, optimizer, model_config, config, state, fingerprint)
                if callback is not None:
                    cancel = bool(callback(state["epoch"], state["history"][-1]))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{state['history'][-1]['train']:.4f}",
                        val=f"{state['history'][-1]['val']:.4f}",
                    )
            if _agree(cancel, world):
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
            state["best"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        result = FitResult(output, state["epoch"], state["best_val"], state["history"], stopped)
        if rank == 0:
            _save_final(
                output, model_config, config, state, windows, split, fingerprint, ds, overwrite
            )
            partial_path(output).unlink(missing_ok=True)
        return result


def _end_of_epoch(
    state: dict[str, Any],
    model: CST,
    windows: ChannelWindows,
    val: np.ndarray,
    config: FitConfig,
    dev: torch.device,
    train_loss: float,
    rank: int,
    world: int,
) -> bool:
    """Validate on rank 0, track the best weights, and agree on early stopping."""
    val_loss = math.nan
    if rank == 0:
        val_loss = validation_loss(model, windows, val, config, dev) if val.any() else train_loss
        state["history"].append({"epoch": state["epoch"], "train": train_loss, "val": val_loss})
        if val_loss < state["best_val"]:
            state["best_val"], state["bad_epochs"] = val_loss, 0
            state["best"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
    return _agree(rank == 0 and state["bad_epochs"] >= config.patience, world)


def _agree(flag: bool, world: int) -> bool:
    """True on every rank if it is True on any rank."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _gather_rng(state: dict[str, Any], world: int) -> list[dict[str, Any]]:
    if world == 1:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * world
    dist.all_gather_object(states, state)
    return states


def _save_progress(
    output: Path,
    model: CST,
    optimizer: torch.optim.Optimizer,
    model_config: CSTConfig,
    config: FitConfig,
    state: dict[str, Any],
    fingerprint: str,
) -> None:
    save_checkpoint(
        {
            "kind": "progress",
            "model_config": dataclasses.asdict(model_config),
            "fit_config": dataclasses.asdict(config),
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "train_state": state,
            "data_fingerprint": fingerprint,
        },
        partial_path(output),
    )


def _resume(
    output: Path,
    model: CST,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    gen: torch.Generator,
    fingerprint: str,
    rank: int,
) -> dict[str, Any]:
    path = partial_path(output)
    if not path.exists():
        raise InputError(output, "nothing to resume: no unfinished training for this output")
    saved = load_checkpoint(path)
    with model_contents(path):
        if saved["data_fingerprint"] != fingerprint:
            raise InputError(path, "was trained on different data than this store; cannot resume")
        model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        state = dict(saved["train_state"])
        _set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)], rng, gen)
    log.info("resuming %s at epoch %d", output, state["epoch"])
    return state


def _save_final(
    output: Path,
    model_config: CSTConfig,
    config: FitConfig,
    state: dict[str, Any],
    windows: ChannelWindows,
    split: TimeSplit,
    fingerprint: str,
    ds: xr.Dataset,
    overwrite: bool,
) -> None:
    save_checkpoint(
        {
            "kind": "model",
            "model_config": dataclasses.asdict(model_config),
            "fit_config": dataclasses.asdict(config),
            "state_dict": state["best"],
            "normalizer": windows.normalizer.to_dict(),
            "data": {
                "var": windows.var,
                "layout": windows.layout,
                "patch": windows.patch,
                "n_channels": windows.n_channels,
                "fs": windows.fs,
                "source_name": str(ds.attrs.get("source_name", "")),
                "fingerprint": fingerprint,
                "train_frames": torch.from_numpy(split.train),
                "val_frames": torch.from_numpy(split.val),
            },
            "history": state["history"],
            "best_val": state["best_val"],
        },
        output,
        replace=overwrite,
    )


def _progress(config: FitConfig, done: int, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.max_epochs, initial=done, desc="fit", unit="epoch")


def load_model(path: str | os.PathLike[str]) -> tuple[CST, dict[str, Any]]:
    """A trained model (eval mode, CPU) and its checkpoint metadata."""
    state = load_checkpoint(path)
    if state.get("kind") != "model":
        raise InputError(path, "is an unfinished training checkpoint, not a model")
    with model_contents(path):
        model_config = dict(state["model_config"])
        if isinstance(model_config.get("fourier_scale"), list):
            model_config["fourier_scale"] = tuple(model_config["fourier_scale"])
        model = CST(CSTConfig(**model_config))
        model.load_state_dict(state["state_dict"])
        model.eval()
        state["normalizer"] = Normalizer.from_dict(state["normalizer"])
    return model, state
