"""cst-neuro: continuous spatiotemporal models of calcium-imaging recordings.

Importing the package is cheap: torch, dask, napari and pynwb load only when a function
that needs them runs.
"""

__version__ = "0.1.0"

from cst_neuro.errors import CSTNeuroError, InputError, OutputError, SchemaError

__all__ = ["CSTNeuroError", "InputError", "OutputError", "SchemaError", "__version__"]
