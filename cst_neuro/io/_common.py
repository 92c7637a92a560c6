"""What the readers share: file sniffing, the rate, traces, lazy HDF5 arrays, footprints.

Each reader module (``suite2p``, ``traces``, ``nwb``, ``movie``, ``caiman``) owns one
format and imports only from here, ``npy`` (numeric files), ``mat5`` (MATLAB files) and
``safe_pickle``, never from another reader.

- ``sniff(path)``: the container a file is by its magic bytes (``npy``, ``npz``, ``hdf5``,
  ``mat73``, ``mat5``), read once from its first bytes;
- ``resolve_fs``: the sampling rate from an option, the file or its timestamps, validated;
- ``as_traces``: any (time, roi) array as float32 with inf as NaN (lazy stays lazy);
- ``H5Array`` / ``lazy_h5``: one HDF5 dataset as a lazily read dask array;
- ``footprint_vars``: sparse footprints as the schema's pixel lists and ROI centroids.
"""

from __future__ import annotations

import logging
import os
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from cst_neuro.errors import InputError
from cst_neuro.io.mat5 import mat_version
from cst_neuro.io.npy import as_dask, read_error, rows_per_chunk
from cst_neuro.schema import MAX_FS

log = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HDF5_OFFSETS = (0, 512)  # where HDF5's signature may sit (512: a MATLAB 7.3 user block)
# what zipfile/zlib/numpy raise for a damaged .npz
ZIP_ERRORS = (OSError, EOFError, ValueError, NotImplementedError, zipfile.BadZipFile, zlib.error)


def sniff(path: Path) -> str | None:
    """``npy``, ``npz``, ``hdf5``, ``mat73`` or ``mat5`` by the file's first bytes, or None.

    MAT v4 files have no signature: None (a reader may go by the suffix). OSError becomes
    an InputError naming the file.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError as e:
        raise read_error(path, e) from e
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head[:4] in ZIP_MAGICS:
        return "npz"
    if any(head[at : at + 8] == HDF5_MAGIC for at in HDF5_OFFSETS):
        return "mat73" if mat_version(head) == "7.3" else "hdf5"
    return "mat5" if mat_version(head) == "5" else None


RATE_TOLERANCE = 0.01  # relative: two rates closer than this are the same rate


def check_rate(path: Path, value: Any, what: str) -> float:
    """``value`` (an option, or whatever a file stores) as a rate in Hz, or InputError.

    One finite number in (0, ``MAX_FS``]: not text, not an empty or longer array.
    """
    if isinstance(value, np.generic):
        value = value.item()  # shown as 30.0, not np.float64(30.0)
    arr = np.asarray(value) if not isinstance(value, str | bytes) else np.asarray(None)
    if arr.size != 1 or arr.dtype.kind not in "iuf":
        raise InputError(path, f"{what} is {value!r}, not a number of Hz")
    rate = float(arr.reshape(-1)[0])
    if not (np.isfinite(rate) and rate > 0):
        raise InputError(path, f"{what} must be a positive number of Hz, got {value!r}")
    if rate > MAX_FS:
        raise InputError(
            path, f"{what} {rate:g} Hz is beyond any imaging frame rate (at most {MAX_FS:g} "
            "Hz); is it in Hz?"
        )  # fmt: skip
    return rate


def resolve_fs(path: Path, fs: Any, stored: Any, timestamps: Any = None) -> float:
    """The rate in Hz: the ``fs`` option, else the file's, else 1 / median timestamp step.

    Each is checked (``check_rate``). The timestamps are the frames' times, so an option
    that contradicts them is an error; a rate stored in the file that disagrees with the
    option or the timestamps gives way to them, with a warning naming both.
    """
    times = None
    if timestamps is not None and len(timestamps) > 1:
        step = float(np.median(np.diff(timestamps)))
        times = check_rate(path, 1.0 / step if step > 0 else 0.0, "the rate of its timestamps")
    stored = None if stored is None else check_rate(path, stored, "the file's sampling rate")
    if fs is not None:
        fs = check_rate(path, fs, "--fs")
        if times is not None and not _same_rate(fs, times):
            raise InputError(
                path, f"--fs {fs:g} Hz contradicts the file's timestamps ({times:g} Hz); "
                "leave --fs out"
            )  # fmt: skip
        if stored is not None and not _same_rate(fs, stored):
            log.warning("%s: --fs %g Hz overrides the file's sampling rate %g Hz", path, fs, stored)
        return fs
    if stored is not None and times is not None and not _same_rate(stored, times):
        log.warning(
            "%s: the file's sampling rate %g Hz disagrees with its timestamps (%g Hz); "
            "using the timestamps", path, stored, times,
        )  # fmt: skip
        return times
    if stored is not None:
        return stored
    if times is not None:
        return times
    raise InputError(path, "no sampling rate in the file; pass --fs HZ")


def _same_rate(a: float, b: float) -> bool:
    return abs(a - b) <= RATE_TOLERANCE * max(a, b)


def as_traces(arr: Any, time_ax: int) -> Any:
    """(time, roi) float32 with inf turned into NaN (lazy when ``arr`` is dask)."""
    arr = arr.reshape(-1, 1) if arr.ndim == 1 else (arr.T if time_ax == 1 else arr)
    arr = arr.astype(np.float32)
    if isinstance(arr, np.ndarray):
        arr[np.isinf(arr)] = np.nan
        return arr
    import dask.array as da

    return da.where(da.isinf(arr), np.float32(np.nan), arr)


class H5Array:
    """One HDF5 dataset read lazily; read errors become InputError naming the file.

    The file opens on the first read and stays open for this object's lifetime (h5py
    closes it when the object is collected). Pickling drops the handle, so dask workers
    reopen the file by path.
    """

    def __init__(self, path: str | os.PathLike[str], name: str) -> None:
        import h5py

        self.path = Path(path)
        self.name = name
        self._lock = threading.Lock()
        self._file: Any = None
        try:
            with h5py.File(self.path, "r") as f:
                ds = f[name]
                self.shape, self.dtype = tuple(ds.shape), np.dtype(ds.dtype)
                unwritten = _unwritten(ds)
        except (OSError, KeyError, TypeError) as e:
            raise InputError(self.path, f"cannot read dataset {name!r} ({e})") from e
        if unwritten:
            raise InputError(
                self.path,
                f"dataset {name!r} of shape {self.shape}: {unwritten} (an interrupted write, "
                "or a header claiming more data than the file holds)",
            )
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        import h5py

        try:
            with self._lock:
                if self._file is None:
                    self._file = h5py.File(self.path, "r")
            return np.asarray(self._file[self.name][key])
        except (OSError, KeyError, RuntimeError) as e:
            raise InputError(self.path, f"cannot read dataset {self.name!r} ({e})") from e

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, ndim=len(state["shape"]), _file=None)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"H5Array({str(self.path)!r}, {self.name!r}, shape={self.shape})"


def _unwritten(ds: Any) -> str:
    """What part of an HDF5 dataset was never written ("" if it all was).

    HDF5 allocates storage lazily: a dataset may declare any shape, and unwritten parts
    read back as the fill value. For a recording that means a killed writer's zeros, or
    a tiny file posing as terabytes; both are refused rather than read.
    """
    if ds.is_virtual or ds.external or ds.size == 0:
        return ""
    if ds.chunks is None:
        nominal = int(ds.size) * ds.dtype.itemsize
        stored = ds.id.get_storage_size()
        return "" if stored >= nominal else f"only {stored} of its {nominal} bytes were written"
    expected = 1
    for size, chunk in zip(ds.shape, ds.chunks, strict=True):
        expected *= -(-size // chunk)
    written = ds.id.get_num_chunks()
    return "" if written >= expected else f"only {written} of its {expected} chunks were written"


def row_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Dask chunks of whole rows along axis 0, about ``CHUNK_BYTES`` each."""
    row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    return (rows_per_chunk(row, shape[0]), *shape[1:])


def lazy_h5(path: Path, name: str) -> Any:
    """A dask array over HDF5 dataset ``name`` in ``path``."""
    arr = H5Array(path, name)
    return as_dask(arr, row_chunks(arr.shape, arr.dtype.itemsize))


MAX_PIXEL = 2**31 - 1  # footprint coordinates are stored as int32
MAX_WEIGHT = float(np.finfo(np.float32).max)  # and weights as float32


def footprint_vars(
    path: Path, roi: Any, y: Any, x: Any, weight: Any, n_roi: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Footprints as the schema's pixel lists (dim ``pix``) and ``roi_y``/``roi_x`` coords.

    A centroid is the weight-weighted mean pixel of its ROI; the plain mean where the
    weights do not sum to a positive number; NaN for a ROI without pixels. Coordinates
    that are not whole numbers in 0..2^31-1 and weights that are NaN, inf or beyond
    float32 are an InputError naming ``path`` (never stored wrapped or as NaN).
    """
    roi = np.asarray(roi, dtype=np.int64)
    y, x = (_pixel_indices(path, a, axis, roi) for a, axis in ((y, "y"), (x, "x")))
    w = np.asarray(weight, dtype=np.float64)
    bad = ~(np.abs(w) <= MAX_WEIGHT)  # NaN too
    if bad.any():
        rois = ", ".join(str(r) for r in np.unique(roi[bad])[:5])
        raise InputError(
            path, f"{int(bad.sum())} footprint weights are NaN, inf or beyond float32 "
            f"(ROI {rois}); the footprints are damaged"
        )  # fmt: skip
    order = np.lexsort((x, y, roi))
    roi, y, x, w = roi[order], y[order], x[order], w[order]
    wsum = np.bincount(roi, weights=w, minlength=n_roi)
    count = np.bincount(roi, minlength=n_roi).astype(np.float64)
    centroids = {}
    for name, pos in (("roi_y", y), ("roi_x", x)):
        weighted = np.bincount(roi, weights=w * pos, minlength=n_roi) / np.where(wsum > 0, wsum, 1)
        plain = np.bincount(roi, weights=pos, minlength=n_roi) / np.maximum(count, 1)
        value = np.where(wsum > 0, weighted, np.where(count > 0, plain, np.nan))
        centroids[name] = ("roi", value, {"units": "pixels"})
    data_vars = {
        "footprint_roi": ("pix", roi.astype(np.int32)),
        "footprint_y": ("pix", y.astype(np.int32)),
        "footprint_x": ("pix", x.astype(np.int32)),
        "footprint_weight": ("pix", w.astype(np.float32)),
    }
    return data_vars, centroids


def _pixel_indices(path: Path, values: Any, axis: str, roi: np.ndarray) -> np.ndarray:
    """Footprint pixel indices along ``axis`` as int64, or InputError naming ``path``."""
    v = np.asarray(values)
    if v.dtype.kind not in "biuf":
        raise InputError(path, f"footprint {axis} coordinates are {v.dtype}, not numbers")
    f = v.astype(np.float64)
    bad = ~((f >= 0) & (f <= MAX_PIXEL) & (f == np.round(f)))  # NaN too
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            path, f"footprint {axis} coordinate {v[first].item()!r} of ROI {roi[first]} is not a "
            f"pixel index (a whole number in 0..{MAX_PIXEL})"
        )  # fmt: skip
    return f.astype(np.int64)
