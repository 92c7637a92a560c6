"""Model checkpoints: atomic writes, safe loads, and a fingerprint of the training data.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: opening a checkpoint from a collaborator never
runs code. Writes go to a temporary sibling and are renamed into place, so a killed
process leaves either the previous checkpoint or the new one, never half of one; with
``replace=False`` an existing file (say, another process's model) is never replaced.
``model_contents`` turns a checkpoint whose structure is damaged (missing or mistyped
entries, weights that do not fit the model) into an InputError naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from cst_neuro.errors import CSTNeuroError, InputError, OutputError
from cst_neuro.store import remove_stale, temporary_sibling

FORMAT = "cst-neuro-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(
    state: dict[str, Any], path: str | os.PathLike[str], *, replace: bool = True
) -> Path:
    """Write ``state`` to ``path`` atomically (fsync, then rename).

    With ``replace=False`` the file is linked into place, which fails if ``path`` exists:
    of two processes writing the same new output, the second gets an OutputError.
    """
    path = Path(path)
    remove_stale(path)
    tmp = temporary_sibling(path, "tmp")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # in memory: torch reports a full disk as RuntimeError
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except FileExistsError as e:
        raise OutputError(
            path, "was created by another process while this one was running; left as is"
        ) from e
    except OSError as e:
        raise OutputError(path, f"cannot write checkpoint ({e.strerror or e})") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _link_new(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path`` only if nothing is there (FileExistsError otherwise).

    A hard link is atomic; where the filesystem has none (FAT, some network mounts) the
    check and the rename are two steps, which leaves a narrow race but never a half file.
    """
    try:
        os.link(tmp, path)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from e
        os.replace(tmp, path)


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


@contextmanager
def model_contents(path: str | os.PathLike[str]) -> Iterator[None]:
    """Report a damaged checkpoint structure as an InputError naming ``path``.

    Loading is safe (plain data only), but a hand-made or corrupted checkpoint can still
    lack entries, hold the wrong types, or carry weights of another shape; building the
    model from it then fails inside torch or the dataclasses, which is the file's fault.
    """
    try:
        yield
    except CSTNeuroError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise InputError(
            path, f"damaged cst-neuro checkpoint ({type(e).__name__}: {detail})"
        ) from e


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
