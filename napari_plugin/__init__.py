"""The cst-neuro napari plugin: a thin npe2 shell over ``cst_neuro.layers``.

Contributions (manifest ``napari.yaml``, spec:
https://napari.org/stable/plugins/technical_references/manifest.html): a reader for
cst-neuro zarr stores and every format ``cst_neuro.io`` reads (``_reader``), and a
simulated sample recording (``_sample_data``). Importing this package loads neither napari
nor Qt; its names resolve lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["make_sample_data", "napari_get_reader", "read_recording"]

_HOMES = {
    "make_sample_data": "napari_plugin._sample_data",
    "napari_get_reader": "napari_plugin._reader",
    "read_recording": "napari_plugin._reader",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
