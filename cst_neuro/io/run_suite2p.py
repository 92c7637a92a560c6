"""Run Suite2p itself on a raw movie, then ingest its output (optional extra ``suite2p``).

Suite2p is GPL-3.0 and pulls a CUDA build of torch through cellpose, so it is never a
core dependency: this module imports it only when called, runs it on the CPU, and works
with both its 0.x API (``default_ops`` + ``run_s2p(ops=, db=)``) and its 1.x API
(``default_settings`` + ``run_s2p(settings=, db=)``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cst_neuro.errors import InputError, OutputError


def run_suite2p(
    movie: str | os.PathLike[str], save_folder: str | os.PathLike[str], *, fs: float | None
) -> Path:
    """Run Suite2p on ``movie`` (a TIFF) and return its ``suite2p/`` output folder."""
    movie, save_folder = Path(movie), Path(save_folder)
    if not movie.is_file():
        raise InputError(movie, "no such movie file")
    if fs is None:
        raise InputError(movie, "running Suite2p needs the frame rate; pass --fs HZ")
    try:
        import suite2p
    except ImportError as e:
        raise InputError(
            movie, "Suite2p is not installed; pip install 'cst-neuro[suite2p]' (GPL-3.0)"
        ) from e
    if save_folder.exists():
        raise OutputError(save_folder, "already exists; remove it or choose another output")
    save_folder.mkdir(parents=True)
    db = {
        "data_path": [str(movie.parent)],
        "file_list": [movie.name],
        "tiff_list": [movie.name],
        "save_path0": str(save_folder),
    }
    if hasattr(suite2p, "default_settings"):  # Suite2p >= 1.0
        settings = suite2p.default_settings()
        settings["fs"] = float(fs)
        settings["torch_device"] = "cpu"
        suite2p.run_s2p(settings=settings, db=db)
    else:
        ops = suite2p.default_ops()
        ops["fs"] = float(fs)
        suite2p.run_s2p(ops=ops, db=db)
    out = save_folder / "suite2p"
    if not (out / "plane0").is_dir():
        raise InputError(movie, f"Suite2p finished without writing {out / 'plane0'}")
    return out
