"""What every command shares: the error contract (``error: ...``, exit 2), logging, outputs."""

from __future__ import annotations

import functools
import logging
import sys
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from cst_neuro.errors import CSTNeuroError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 2


def comma_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated option ("a, b,,c" -> a, b, c)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def fail(message: str) -> typer.Exit:
    """Print one ``error:`` line to stderr and return the exit to raise (code 2)."""
    _end_progress_bars()
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def _end_progress_bars() -> None:
    """Close live tqdm bars so that the error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def handle_errors(func: F) -> F:
    """Turn the package's own errors into one ``error:`` line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CSTNeuroError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return typing.cast(F, wrapper)


def setup_logging(verbose: bool) -> None:
    """Warnings (or, with --verbose, info) from the library go to stderr."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
