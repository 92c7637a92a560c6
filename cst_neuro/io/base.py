"""One interface for every recording format, and the dispatcher that picks a reader.

Each format lives in its own module (``suite2p``, ``traces``, ``nwb``, ``movie``,
``caiman``) with one ``Reader`` subclass registered at the bottom of the module. A reader
has a cheap, never-raising ``guess_can_open`` and a keyword-only ``open`` returning a
Recording (see ``cst_neuro.schema``). Readers return raw data lazily; ΔF/F, grids and
storage are later stages (``cst_neuro.preprocess``, ``cst_neuro.grid``, ``cst_neuro.store``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import xarray as xr

from cst_neuro.errors import InputError

log = logging.getLogger(__name__)

READER_MODULES = ("suite2p", "caiman", "nwb", "movie", "traces")
READERS: dict[str, Reader] = {}


class Reader:
    """Base class: subclasses set ``name``/``description`` and implement both methods.

    ``open(path, *, option=default, ...)`` takes only keyword-only options and returns an
    ``xarray.Dataset`` following the Recording schema; on bad input it raises
    ``cst_neuro.errors.InputError`` naming the file and the problem.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # ``open(path, *, option=default, ...)``: each reader declares its own options
    open: Callable[..., xr.Dataset]

    def guess_can_open(self, path: Path) -> bool:
        """Whether ``path`` looks like this format (cheap: names and magic bytes only)."""
        return False

    def option_names(self) -> set[str]:
        """The keyword-only options ``open`` accepts."""
        params = inspect.signature(self.open).parameters.values()
        return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def register(reader_cls: type[Reader]) -> type[Reader]:
    """Add a reader to the registry (used at the bottom of each format module)."""
    READERS[reader_cls.name] = reader_cls()
    return reader_cls


def load_readers(only: str | None = None) -> dict[str, Reader]:
    """Import the format modules (or just ``only``) so that each registers its reader.

    A module that fails to import is skipped with a RuntimeWarning: one broken reader
    must not make every other format unreadable.
    """
    for module in READER_MODULES if only is None else [only]:
        try:
            importlib.import_module(f"cst_neuro.io.{module}")
        except ImportError as e:
            warnings.warn(
                f"cst-neuro reader {module!r} unavailable: {e}", RuntimeWarning, stacklevel=2
            )
    return READERS


def check_openable(path: Path) -> None:
    """InputError unless ``path`` is a regular file or a folder.

    A named pipe or a device (``/dev/zero``) behind a recording's name would block or
    never end on the first read, and a broken or looping link cannot be read at all.
    """
    if path.is_symlink() and not path.exists():
        raise InputError(path, "is a broken or looping symbolic link")
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if not (path.is_file() or path.is_dir()):
        raise InputError(path, "is not a regular file or folder (a pipe or a device?)")


def guess_format(path: str | os.PathLike[str]) -> str:
    """Name of the first reader that recognises ``path``; InputError listing those tried."""
    path = Path(path)
    check_openable(path)
    readers = load_readers()
    for name, reader in readers.items():
        try:
            if reader.guess_can_open(path):
                return name
        except Exception as e:  # a sniffer must never stop the others, nor fail unseen
            log.warning(
                "%s: the %s reader's format check failed (%s: %s); trying the others",
                path, name, type(e).__name__, e,
            )  # fmt: skip
    raise InputError(
        path,
        f"can't tell the format (tried {', '.join(readers)}); pass --format {'|'.join(readers)}",
    )


def open_recording(
    path: str | os.PathLike[str], *, format: str = "auto", **options: Any
) -> xr.Dataset:
    """Open any supported recording as a Recording (lazy where the format allows).

    ``options`` whose value is None are ignored; an option the chosen reader does not
    take is an error rather than silently dropped.
    """
    path = Path(path)
    check_openable(path)
    if format != "auto" and format not in READER_MODULES:
        raise InputError(
            path, f"unknown format {format!r}; choose from {', '.join(READER_MODULES)}"
        )
    readers = load_readers(None if format == "auto" else format)
    name = guess_format(path) if format == "auto" else format
    if name not in readers:
        raise InputError(path, f"unknown format {name!r}; choose from {', '.join(readers)}")
    reader = readers[name]
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - reader.option_names())
    if unknown:
        raise InputError(path, f"option(s) {', '.join(unknown)} do not apply to the {name} reader")
    try:
        return reader.open(path, **given)
    except MemoryError as e:  # a header that asks for more than the machine has
        raise InputError(path, "opening it needs more memory than is available") from e
