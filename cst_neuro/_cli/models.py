"""Commands that train and query models: ``fit``, ``reconstruct``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cst_neuro._cli.common import CHECKPOINT, fail, handle_errors


class Mode(StrEnum):
    cst = "cst"
    transformer = "transformer"
    paper = "paper"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@handle_errors
def fit(
    store: Annotated[Path, typer.Argument(help="A zarr store written by cst-neuro ingest.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model checkpoint (.pt).")],
    mode: Annotated[Mode, typer.Option(help="Model mode.")] = Mode.cst,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of training (and [model]) settings.")
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(min=0, help="Epoch limit.")] = None,
    max_minutes: Annotated[float | None, typer.Option(min=0, help="Time budget.")] = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model file.")] = False,
) -> None:
    """Train a continuous model of a recording (validation on held-out frame blocks)."""
    from cst_neuro.atomic import check_output
    from cst_neuro.store import open_store
    from cst_neuro.train import FitConfig
    from cst_neuro.train import fit as run_fit

    output = check_output(output, CHECKPOINT, overwrite=overwrite, inputs=[store])
    overrides = {
        k: v
        for k, v in dict(
            mode=mode.value, max_epochs=max_epochs, max_minutes=max_minutes, seed=seed
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
        resume=resume,
        progress=True,
        overwrite=overwrite,
    )
    typer.echo(
        f"wrote {result.path} ({result.epochs} epochs, stopped by {result.stopped}, "
        f"best validation MSE {result.best_val:.4g} in normalised units)"
    )


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
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Evaluate a model at K× the frame rate (or given times) and write a zarr store."""
    from cst_neuro.checkpoint import resolve_device
    from cst_neuro.reconstruct import Reconstructor, read_times
    from cst_neuro.reconstruct import reconstruct as run_reconstruct
    from cst_neuro.store import check_writable, open_store, write_recording

    if (upsample is None) == (times is None):
        raise fail("give exactly one of --upsample K or --times FILE.npy")
    check_writable(output, overwrite=overwrite, inputs=[p for p in (model, store, times) if p])
    ds = open_store(store)
    query = None if times is None else read_times(times)
    rec = Reconstructor.from_checkpoint(model, ds, device=resolve_device(device.value))
    out = run_reconstruct(rec, ds, upsample=upsample, times=query)
    write_recording(out, output, overwrite=overwrite, progress=True)
    typer.echo(f"wrote {output} ({out.sizes['time']} times at {out.attrs['fs']:g} Hz)")
