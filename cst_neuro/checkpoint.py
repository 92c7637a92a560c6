"""Model checkpoints: atomic writes, safe loads, and a fingerprint of the training data.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: opening a checkpoint from a collaborator never
runs code. Writes go to a temporary sibling and are renamed into place, so a killed
process leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from cst_neuro.errors import InputError, OutputError

FORMAT = "cst-neuro-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (fsync, then rename)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write checkpoint ({e.strerror or e})") from e
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint without executing code; InputError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(path, f"not a loadable cst-neuro checkpoint ({reason})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(path, "not a cst-neuro checkpoint")
    if int(state.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(path, "checkpoint is from a newer cst-neuro; upgrade to load it")
    return state


def data_fingerprint(values: xr.DataArray, *, frames_per_read: int = 4096) -> str:
    """BLAKE2b of a variable's bytes, read in blocks of frames (bounded memory)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((values.dims, values.shape, str(values.dtype))).encode())
    for start in range(0, values.sizes["time"], frames_per_read):
        block = np.ascontiguousarray(values.isel(time=slice(start, start + frames_per_read)))
        digest.update(block.tobytes())
    return digest.hexdigest()


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; an explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, "--device cuda was requested but no CUDA GPU is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(None, f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)
