"""napari reader contribution: cst-neuro stores, Suite2p folders, trace arrays, movies.

Follows the npe2 reader contract
(https://napari.org/stable/plugins/building_a_plugin/guides.html#readers):
``napari_get_reader(path)`` returns a reader function or None, cheaply and never raising;
the reader function returns LayerData tuples built by ``cst_neuro.layers`` (Qt-free),
or napari's "read, nothing to show" sentinel ``[(None,)]`` for a traces-only recording.
Warnings that cst-neuro logs while reading (no sampling rate, nothing to display) are
re-raised as Python warnings, which napari shows as notifications.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cst_neuro.layers import LayerData, can_open, read_layers

log = logging.getLogger(__name__)

PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
ReaderFunction = Callable[[PathOrPaths], list[Any]]


def napari_get_reader(path: PathOrPaths) -> ReaderFunction | None:
    """``read_recording`` when cst-neuro can open ``path`` (one path, not a stack), else None."""
    try:
        target = _single_path(path)
        if target is not None and can_open(target):
            return read_recording
    except Exception as e:  # a reader hook must never raise
        log.debug("cst-neuro cannot read %r: %s", path, e)
    return None


def read_recording(path: PathOrPaths) -> list[LayerData] | list[tuple[None]]:
    """Layers of the recording at ``path`` (see ``cst_neuro.layers.recording_layers``)."""
    target = _single_path(path)
    if target is None:
        raise ValueError(f"cst-neuro opens one recording at a time, got {path!r}")
    with _log_warnings_as_warnings():
        layers = read_layers(target)
    return layers or [(None,)]


def _single_path(path: PathOrPaths) -> Path | None:
    """The one path in ``path`` (a path, or a list holding one), else None."""
    if isinstance(path, str | os.PathLike):
        return Path(path)
    if isinstance(path, Sequence) and len(path) == 1:
        return _single_path(path[0])
    return None


class _WarnHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        warnings.warn(record.getMessage(), UserWarning, stacklevel=2)


@contextmanager
def _log_warnings_as_warnings() -> Iterator[None]:
    """Turn cst-neuro's logged warnings into ``warnings.warn`` (napari notifications)."""
    logger = logging.getLogger("cst_neuro")
    handler = _WarnHandler(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
