"""Commands that run whole pipelines: ``batch`` (many recordings on Dask) and ``demo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cst_neuro._cli.common import comma_list, handle_errors
from cst_neuro.demo import DemoConfig

EXIT_SOME_FAILED = 1


@handle_errors
def batch(
    inputs: Annotated[
        list[Path], typer.Argument(help="Recordings: Suite2p folders, files, or zarr stores.")
    ],
    outdir: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a running Dask scheduler (tcp://host:8786).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes of the local cluster.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML: [ingest], [fit], [reconstruct], [evaluate], [batch] settings."),
    ] = None,
    steps: Annotated[
        str, typer.Option(help="Comma-separated steps to run.")
    ] = "ingest,fit,reconstruct,evaluate",
) -> None:
    """Run recordings through the pipeline on Dask; reruns skip finished, unchanged steps."""
    from cst_neuro.batch import BatchSettings, run_batch

    settings = BatchSettings.from_toml(config) if config else BatchSettings()
    chosen = comma_list(steps)
    report = run_batch(
        inputs,
        outdir,
        steps=chosen,
        settings=settings,
        scheduler=scheduler,
        workers=workers,
        progress=True,
    )
    typer.echo(report.brief())
    typer.echo(f"wrote {report.summary_csv} and {report.summary_md}")
    for result in report.failed:
        typer.echo(f"failed: {result.name}: {result.error}", err=True)
    if report.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@handle_errors
def demo(
    outdir: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for the demo's files.")
    ] = Path("cst-neuro-demo"),
    minutes: Annotated[
        float, typer.Option(min=0, help="Training budget in minutes.")
    ] = DemoConfig.fit_minutes,
    overwrite: Annotated[bool, typer.Option(help="Replace the files of an earlier demo.")] = False,
) -> None:
    """Simulate, ingest, fit, reconstruct at 4× and score against the known truth (< 5 min)."""
    from cst_neuro.batch.steps import OMP_ENV

    for key, value in OMP_ENV.items():  # before torch is loaded
        os.environ.setdefault(key, value)
    from cst_neuro.batch.report import markdown_table
    from cst_neuro.demo import run_demo

    result = run_demo(outdir, config=DemoConfig(fit_minutes=minutes), overwrite=overwrite)
    typer.echo(markdown_table(result.scores, list(result.scores[0])))
    typer.echo(f"\ndemo finished in {result.seconds:.0f} s; results in {result.outdir}:")
    for what, path in result.paths.items():
        typer.echo(f"  {what}: {path}")
