"""Recordings on disk: chunked, compressed zarr stores that are complete or absent.

A store is written into a hidden sibling folder and renamed into place only after every
chunk and a completion mark are on disk, so an interrupted write never leaves a store that
opens as valid, and an existing output is replaced only with ``overwrite=True`` (and only
if it is itself a zarr store). Every chunk carries a CRC32C checksum, and the completion
mark records how many chunk files each variable has, so a damaged chunk or a partial copy
of a store is an InputError naming the store, never silently wrong or missing values.
Without ``overwrite``, a store that another process put in place meanwhile is never
replaced: the later writer fails instead. Temporaries carry the host and process id, so
the next write of the same output removes those of killed runs.
``open_store`` checks the completion mark and the ``schema_version`` before returning a
lazy Dataset.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError, OutputError, SchemaError
from cst_neuro.schema import validate_recording

COMPLETE_ATTR = "cst_neuro_complete"
CHUNKS_ATTR = "cst_neuro_chunk_files"  # {variable: chunk files written}, set with COMPLETE_ATTR
TIME_CHUNK = 4096  # frames per chunk for (time, roi) variables: ~2 MB at 128 ROIs
GRID_CHUNK_BYTES = 4 << 20  # target bytes per (time, y, x) chunk


def _chunks_for(var: xr.DataArray) -> tuple[int, ...]:
    """Zarr chunk shape: along time, aligned with the variable's dask chunks if any."""
    dask_chunks = var.chunks  # tuple of tuples or None
    chunks = []
    for axis, (dim, size) in enumerate(zip(var.dims, var.shape, strict=True)):
        aligned = dask_chunks[axis][0] if dask_chunks else size
        if dim == "time":
            if var.ndim >= 3:
                frame_bytes = int(np.prod(var.shape[1:])) * var.dtype.itemsize
                want = max(1, GRID_CHUNK_BYTES // max(frame_bytes, 1))
            else:
                want = TIME_CHUNK
            chunks.append(_divisor_chunk(aligned, want) if dask_chunks else min(size, want))
        else:
            chunks.append(max(1, min(size, aligned)))
    return tuple(chunks)


def _divisor_chunk(dask_chunk: int, want: int) -> int:
    """A zarr chunk that tiles the dask chunk exactly (so parallel writes never overlap)."""
    if dask_chunk <= want:
        return dask_chunk
    for n in range(-(-dask_chunk // want), dask_chunk + 1):
        if dask_chunk % n == 0:
            return dask_chunk // n
    return dask_chunk


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    from zarr.codecs import BloscCodec, Crc32cCodec

    codec = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")  # fastest here on noisy float32
    codecs = (codec, Crc32cCodec())  # a checksum per chunk: damage is an error, not garbage
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        if var.ndim == 0:
            continue
        encoding[str(name)] = {"chunks": _chunks_for(xr.DataArray(var)), "compressors": codecs}
    return encoding


def _plain_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as JSON-friendly Python values (numpy scalars unwrapped)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


def is_store(path: Path) -> bool:
    """Whether ``path`` is a zarr store (v2 or v3 root metadata present)."""
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup"))


def check_writable(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str]] = (),
    store: bool = True,
) -> Path:
    """Fail early (before any work) if ``path`` cannot be written as a new store (or file).

    ``inputs`` are the paths the command reads: an output that is one of them, lies inside
    one, or contains one is refused, since writing it would destroy or corrupt the input.
    """
    path = Path(path)
    exists = path.exists() or path.is_symlink()
    if exists and not overwrite:
        raise OutputError(path, "already exists; pass --overwrite to replace it")
    check_not_an_input(path, inputs)
    if exists:
        if store and not is_store(path):
            raise OutputError(path, "exists and is not a zarr store; refusing to replace it")
        if not store and not path.is_file():
            raise OutputError(path, "exists and is not a file; refusing to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(path, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(path, f"output folder {parent} is not writable")
    return path


def check_not_an_input(path: Path, inputs: Iterable[str | os.PathLike[str]]) -> None:
    """OutputError if ``path`` is, contains or lies inside one of ``inputs``."""
    out = Path(os.path.realpath(path))
    for given in inputs:
        source = Path(os.path.realpath(given))
        if out == source:
            raise OutputError(path, f"is the input {given}; write to another path")
        if source in out.parents:
            raise OutputError(path, f"lies inside the input {given}; write elsewhere")
        if out in source.parents:
            raise OutputError(path, f"contains the input {given}; write elsewhere")


def temporary_sibling(path: Path, kind: str) -> Path:
    """A hidden sibling ``.NAME.KIND-HOST-PID-RANDOM`` (see ``remove_stale``)."""
    tag = f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.parent / f".{path.name}.{kind}-{tag}"


def remove_stale(path: Path) -> None:
    """Delete temporaries of ``path`` left by processes of this host that no longer run.

    A killed writer (kill -9, power cut) cannot clean up after itself; its temporaries
    are hidden and never open as outputs, but they hold disk space until the next write.
    Temporaries of live processes, or of other hosts sharing the folder, are left alone.
    """
    host = _host()
    try:
        siblings = list(path.parent.glob(f".{glob.escape(path.name)}.*-{host}-*-*"))
    except OSError:
        return
    for tmp in siblings:
        pid = tmp.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _host() -> str:
    return "".join(c for c in socket.gethostname() if c.isalnum()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def write_recording(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a Recording to a zarr store atomically; dask-backed data is streamed in chunks."""
    path = check_writable(path, overwrite=overwrite)
    validate_recording(ds)
    out = ds.copy()
    out.attrs = _plain_attrs(dict(ds.attrs))
    out.attrs.pop(COMPLETE_ATTR, None)
    for name in out.variables:
        out[name].encoding = {}
    with atomic_folder(path, overwrite=overwrite, create=False) as tmp:
        delayed = out.to_zarr(
            tmp,
            mode="w-",
            zarr_format=3,
            consolidated=False,
            encoding=_encoding(out),
            compute=False,
        )
        _compute(delayed, progress=progress)
        _mark_complete(tmp)
    return path


@contextmanager
def atomic_folder(path: Path, *, overwrite: bool, create: bool = True) -> Iterator[Path]:
    """A hidden sibling of ``path`` to fill, renamed onto ``path`` when the block succeeds.

    On any error the temporary is removed (OSError becomes an OutputError naming ``path``),
    so ``path`` is only ever absent, the previous output or the complete new one. With
    ``create`` the temporary folder is made empty; else the block creates it.
    """
    remove_stale(path)
    tmp = temporary_sibling(path, "partial")
    try:
        if create:
            tmp.mkdir()
        yield tmp
        _swap_into_place(tmp, path, overwrite=overwrite)
    except OutputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(path, f"write failed ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _compute(delayed: Any, *, progress: bool) -> None:
    if progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="writing", unit="chunk", leave=False):
            delayed.compute()
    else:
        delayed.compute()


def _mark_complete(store: Path) -> None:
    import zarr

    group = zarr.open_group(store, mode="r+", zarr_format=3)
    counts = {name: _chunk_files(store / name) for name in group.array_keys()}
    group.attrs.update({CHUNKS_ATTR: counts, COMPLETE_ATTR: True})


def _chunk_files(array: Path) -> int:
    """Chunk files of one zarr v3 array (all-fill chunks are not written, so not counted)."""
    return sum(len(files) for _, _, files in os.walk(array / "c"))


def _missing_chunks(path: Path, counts: Any) -> str:
    """What is missing ("" if nothing) against the chunk-file counts of the completion mark."""
    if not isinstance(counts, dict):
        return ""
    for name, expected in counts.items():
        found = _chunk_files(path / str(name))
        if found < int(expected):
            return f"{name} has {found} of its {expected} chunk files"
    return ""


class _StoreArray:
    """One variable of a store, read lazily; a failed read names the store and variable."""

    def __init__(self, var: xr.Variable, path: Path, name: str) -> None:
        self.var, self.path, self.name = var, path, name
        self.shape, self.dtype, self.ndim = var.shape, var.dtype, var.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.var[key].values)
        except Exception as e:  # zarr, codecs and checksums raise many types
            raise InputError(
                self.path, f"cannot read {self.name!r}: a damaged chunk ({type(e).__name__}: {e})"
            ) from e


def _guarded(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """``ds`` with every non-index variable as dask over ``_StoreArray`` (zarr's chunks)."""
    import dask.array as da

    data_vars, coords = {}, {}
    for name, var in ds.variables.items():
        if name in ds.indexes or var.ndim == 0:
            continue
        chunks = var.encoding.get("preferred_chunks") or var.encoding.get("chunks") or var.shape
        if isinstance(chunks, dict):
            chunks = tuple(chunks.get(d, n) for d, n in zip(var.dims, var.shape, strict=True))
        meta = np.empty((0,) * var.ndim, var.dtype)
        array = _StoreArray(var, path, str(name))
        data = da.from_array(array, chunks=chunks, asarray=False, lock=False, meta=meta)
        new = xr.Variable(var.dims, data, var.attrs, var.encoding)
        (coords if name in ds.coords else data_vars)[name] = new
    return ds.assign_coords(coords).assign(data_vars)


def _swap_into_place(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename the finished store into place; replace an existing one only if ``overwrite``."""
    if not overwrite:
        try:
            os.rename(tmp, path)  # fails on an existing (non-empty) store: never replaced
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise OutputError(
                    path, "was created by another process while this one was writing; left as is"
                ) from e
            raise
        return
    old = None
    if path.exists():
        old = temporary_sibling(path, "replaced")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def open_store(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a store written by ``write_recording`` lazily, checking completeness and schema."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such store")
    if not is_store(path):
        raise InputError(path, "not a zarr store (no zarr.json); was it written by cst-neuro?")
    try:
        ds = xr.open_zarr(
            path,
            chunks=None,
            consolidated=False,
            zarr_format=None,
            decode_times=False,
            decode_timedelta=False,
            mask_and_scale=True,
        )
        ds = _guarded(ds, path)
    except Exception as e:  # zarr/xarray raise many types for corrupt metadata
        raise InputError(path, f"cannot open zarr store ({type(e).__name__}: {e})") from e
    if not ds.attrs.pop(COMPLETE_ATTR, False):
        raise SchemaError(path, "store is incomplete (an interrupted write?); write it again")
    missing = _missing_chunks(path, ds.attrs.pop(CHUNKS_ATTR, None))
    if missing:
        raise SchemaError(path, f"store is damaged or partly copied: {missing}")
    ds.attrs.setdefault("source_name", path.name)
    try:
        validate_recording(ds)
    except SchemaError as e:
        raise SchemaError(path, e.problem) from None
    return ds
