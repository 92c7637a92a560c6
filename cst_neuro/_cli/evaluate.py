"""The ``evaluate`` command: score CST against classic baselines on a store's held-out samples."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cst_neuro._cli.common import comma_list, handle_errors


class TaskName(StrEnum):
    upsample = "upsample"
    infill = "infill"
    forecast = "forecast"
    spatial = "spatial"


@handle_errors
def evaluate(
    store: Annotated[Path, typer.Argument(help="A zarr store written by cst-neuro ingest.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder to write.")],
    task: Annotated[TaskName, typer.Option(help="What to predict.")] = TaskName.upsample,
    factor: Annotated[int, typer.Option(min=2, help="Upsampling factor K.")] = 4,
    fraction: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="In-filling: share of frames hidden.")
    ] = 0.2,
    block: Annotated[int, typer.Option(min=1, help="In-filling: frames per hidden block.")] = 1,
    horizon: Annotated[int, typer.Option(min=1, help="Forecasting: frames ahead.")] = 4,
    methods: Annotated[
        str | None,
        typer.Option(help="Comma-separated methods (default: all that apply), e.g. cst,linear."),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds (splits and model inits).")] = 1,
    max_minutes: Annotated[
        float | None, typer.Option(min=0, help="Time budget of the whole run (default 8).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of training settings for the model fits.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report.")] = False,
) -> None:
    """Score methods on held-out samples; write report.json, report.md and figures."""
    import dataclasses

    from cst_neuro.atomic import check_output
    from cst_neuro.evaluate import evaluate_store
    from cst_neuro.evaluate.report import REPORT
    from cst_neuro.train import FitConfig

    output = check_output(output, REPORT, overwrite=overwrite, inputs=[store])
    settings = None
    if config is not None:  # only what the file sets: the evaluation keeps its own budget
        given = FitConfig.from_toml(config)
        defaults = FitConfig()
        settings = {
            f.name: getattr(given, f.name)
            for f in dataclasses.fields(FitConfig)
            if getattr(given, f.name) != getattr(defaults, f.name)
        }
    chosen = None if methods is None else comma_list(methods)
    report = evaluate_store(
        store,
        task=task.value,
        factor=factor,
        methods=chosen,
        seeds=seeds,
        max_minutes=max_minutes,
        out_dir=output,
        fraction=fraction,
        block=block,
        horizon=horizon,
        fit_settings=settings,
    )
    typer.echo(report.table())
    typer.echo(f"wrote {output}")
