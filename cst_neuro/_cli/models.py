"""Commands that train and query models: ``fit``, ``reconstruct``, ``pretrain``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cst_neuro._cli.common import fail, handle_errors
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.modes import MODES

Mode = StrEnum("Mode", {name: name for name in MODES})  # type: ignore[misc]
DEFAULT_MODE = Mode(FitConfig.mode)


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


PRECISION_HELP = "bf16 autocast, or fp32; auto: bf16 where the hardware multiplies it."


@handle_errors
def fit(
    store: Annotated[Path, typer.Argument(help="A zarr store written by cst-neuro ingest.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model checkpoint (.pt).")],
    mode: Annotated[Mode, typer.Option(help="Model mode.")] = DEFAULT_MODE,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of training (and [model]) settings.")
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(min=0, help="Epoch limit.")] = None,
    max_minutes: Annotated[float | None, typer.Option(min=0, help="Time budget.")] = None,
    prior: Annotated[
        str | None,
        typer.Option(
            help="Start from: default (the shipped calcium prior), none (from scratch) or a "
            "prior file from cst-neuro pretrain. Default: the mode's (cst: default)."
        ),
    ] = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.auto,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model file.")] = False,
) -> None:
    """Train a continuous model of a recording (validation on held-out frame blocks).

    A cst model starts from the calcium prior and fine-tunes it; --max-epochs 0 binds the
    prior to the recording without training (zero-shot).
    """
    from cst_neuro.atomic import check_output
    from cst_neuro.checkpoint import CHECKPOINT
    from cst_neuro.store import open_store
    from cst_neuro.train import fit as run_fit

    output = check_output(output, CHECKPOINT, overwrite=overwrite, inputs=[store])
    overrides = {
        k: v
        for k, v in dict(
            mode=mode.value, max_epochs=max_epochs, max_minutes=max_minutes, seed=seed, prior=prior
        ).items()
        if v is not None
    }
    settings = (
        FitConfig.from_toml(config, **overrides) if config else FitConfig.from_dict(overrides)
    )
    result = run_fit(
        open_store(store),
        output,
        config=settings,
        device=device.value,
        precision=precision.value,
        resume=resume,
        progress=True,
        overwrite=overwrite,
    )
    typer.echo(
        f"wrote {result.path} ({result.epochs} epochs from prior {result.prior}, stopped by "
        f"{result.stopped}, best validation MSE {result.best_val:.4g} in normalised units)"
    )
    if result.prior != "none" and result.epochs > 0 and result.best_epoch == 0:
        weighed = f" ({result.gain.line()})" if result.gain is not None else ""
        typer.echo(
            f"fine-tuning did not beat the prior beyond the validation frames' noise{weighed}: "
            f"{result.path} keeps the prior's own (zero-shot) weights"
        )
    if result.blend is not None:
        typer.echo(result.blend.line())


@handle_errors
def reconstruct(
    model: Annotated[Path, typer.Argument(help="A model written by cst-neuro fit.")],
    store: Annotated[Path, typer.Argument(help="The recording's zarr store.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output zarr store.")],
    upsample: Annotated[
        int | None, typer.Option(min=1, help="K: output at K times the frame rate.")
    ] = None,
    times: Annotated[Path | None, typer.Option(help=".npy file of query times in seconds.")] = None,
    device: Annotated[Device, typer.Option(help="Where to run the model.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.auto,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Evaluate a model at K× the frame rate (or given times) and write a zarr store."""
    from cst_neuro.device import resolve_device
    from cst_neuro.reconstruct import Reconstructor, read_times
    from cst_neuro.reconstruct import reconstruct as run_reconstruct
    from cst_neuro.store import check_writable, open_store, write_recording

    if (upsample is None) == (times is None):
        raise fail("give exactly one of --upsample K or --times FILE.npy")
    check_writable(output, overwrite=overwrite, inputs=[p for p in (model, store, times) if p])
    ds = open_store(store)
    query = None if times is None else read_times(times, ds)
    rec = Reconstructor.from_checkpoint(
        model, ds, device=resolve_device(device.value), precision=precision.value
    )
    out = run_reconstruct(rec, ds, upsample=upsample, times=query, progress=True)
    write_recording(out, output, overwrite=overwrite)
    typer.echo(f"wrote {output} ({out.sizes['time']} times at {out.attrs['fs']:g} Hz)")


@handle_errors
def pretrain(
    output: Annotated[Path, typer.Option("-o", "--output", help="Prior checkpoint (.pt).")],
    recordings: Annotated[
        list[Path] | None,
        typer.Argument(help="Real recordings to add to the synthetic corpus (stores or sources)."),
    ] = None,
    max_minutes: Annotated[float, typer.Option(min=0.01, help="Time budget.")] = 60.0,
    max_steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed (the corpus replays from it).")] = 0,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.auto,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing prior file.")] = False,
) -> None:
    """Pretrain a calcium prior on simulated recordings (and real ones given) for fit --prior."""
    from cst_neuro.atomic import check_output
    from cst_neuro.checkpoint import CHECKPOINT
    from cst_neuro.pretrain import PretrainConfig
    from cst_neuro.pretrain import pretrain as run_pretrain

    output = check_output(output, CHECKPOINT, overwrite=overwrite, inputs=list(recordings or []))
    result = run_pretrain(
        output,
        config=PretrainConfig(seed=seed, max_steps=max_steps, max_minutes=max_minutes),
        recordings=list(recordings or []),
        device=device.value,
        precision=precision.value,
        resume=resume,
        progress=True,
    )
    typer.echo(
        f"wrote {result.path} ({result.steps} steps in {result.seconds / 60:.1f} min, stopped by "
        f"{result.stopped}; validation MSE {result.best_val:.3f}x linear interpolation)"
    )
