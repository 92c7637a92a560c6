"""Entry point of the ``cst-neuro`` console script: wires the command modules together."""

from __future__ import annotations

from typing import Annotated

import typer

from cst_neuro import __version__
from cst_neuro._cli import batch, evaluate, models, recordings, view
from cst_neuro._cli.common import setup_logging

app = typer.Typer(
    name="cst-neuro",
    help="Continuous spatiotemporal models of calcium-imaging recordings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[fit]" names a TOML table
)
app.command()(recordings.ingest)
app.command()(recordings.info)
app.command()(recordings.simulate)
app.command()(models.fit)
app.command()(models.reconstruct)
app.command()(models.pretrain)
app.command()(batch.batch)
app.command()(batch.demo)
app.command()(view.view)
app.command()(evaluate.evaluate)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cst-neuro {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    setup_logging(verbose)


def main() -> None:
    """Run the CLI (console-script entry point)."""
    app()
