"""The ``movie`` reader: raw calcium-imaging movies stored as TIFF stacks.

Owns TIFF input (TIFF 6 and BigTIFF through tifffile, ImageJ hyperstack metadata). The
movie becomes ``grid(time, y, x)`` float32 and ``mean_image(y, x)``, both lazy. An
uncompressed, contiguous series (what ImageJ, ScanImage and ``tifffile.imwrite`` write) is
read with positioned reads at the series' data offset (``cst_neuro.io.npy.NumericFile``),
so memory stays bounded by one chunk of frames; anything else (compressed, tiled, pages
scattered through the file) goes through tifffile's zarr store.

The movie must have exactly one axis besides y and x once singleton axes are dropped; it is
time whatever its label (ImageJ calls an unlabelled stack "slices", tifffile a generic
"Q"/"I" axis). Channels, RGB samples or a second stack axis are refused: split them first.
Frames written one call at a time (many single-page series) are read as one stack. The
rate comes from ``fs``, else ImageJ ``finterval`` (in ``tunit``) or ``fps``. Pixel centres
sit at integer positions (``y = 0 .. Ly-1``), the frame used by footprints and centroids.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.io._common import resolve_fs
from cst_neuro.io.base import Reader, register
from cst_neuro.io.npy import NumericFile, as_dask, rows_per_chunk
from cst_neuro.schema import frame_times, new_recording

log = logging.getLogger(__name__)

SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
NOT_TIME_AXES = {"C": "channels", "S": "colour samples (RGB)", "Y": "y", "X": "x"}
TIME_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3}
TIME_UNITS |= {"msec": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "min": 60.0, "minute": 60.0}


MARK_KEY = "cst_neuro"  # ImageJ metadata key naming what cst-neuro wrote a TIFF as


def tiff_mark(path: Path) -> str | None:
    """The ``cst_neuro`` entry of a TIFF's ImageJ metadata (what wrote it), or None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            mark = (tif.imagej_metadata or {}).get(MARK_KEY)
    except Exception:  # not a TIFF, or a damaged one: not ours either way
        return None
    return mark if isinstance(mark, str) else None


class ZarrFrames:
    """Series 0 of a TIFF read through tifffile's zarr store; errors become InputError.

    The store (and its open file) is created on the first read and kept for this object's
    lifetime; pickling drops it so that dask workers reopen the file by path.
    """

    def __init__(self, path: Path, flags: dict[str, Any], shape: tuple[int, ...], dtype: Any):
        self.path, self.flags = Path(path), dict(flags)
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._lock = threading.Lock()
        self._array: Any = None

    def _open(self) -> Any:
        import tifffile
        import zarr

        with self._lock:
            if self._array is None:
                store = tifffile.imread(self.path, aszarr=True, series=0, level=0, **self.flags)
                self._array = zarr.open(store, mode="r")
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self._open()[key])
        except InputError:
            raise
        except Exception as e:  # codecs (zlib, LZW, JPEG...) each raise their own types
            raise InputError(self.path, f"cannot read TIFF image data ({e})") from e

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "flags": self.flags, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, ndim=len(state["shape"]), _array=None)
        self._lock = threading.Lock()


def movie_shape(path: Path, shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    """(time, y, x) of a series, or InputError for a single image or a multi-axis stack."""
    if 0 in shape:
        raise InputError(path, f"the image series is empty (axes {axes!r}, shape {shape})")
    kept = [(a, n) for a, n in zip(axes, shape, strict=True) if n != 1 or a in "YX"]
    extra = [(a, n) for a, n in kept if a not in "YX"]
    if len(extra) > 1 or any(a in NOT_TIME_AXES for a, _ in extra):
        what = ", ".join(f"{NOT_TIME_AXES.get(a, a)}={n}" for a, n in extra)
        raise InputError(
            path,
            f"a stack with axes {axes!r} shape {shape} ({what}): only (time, y, x) movies "
            "are read; save one channel/plane per file",
        )
    if [a for a, _ in kept[-2:]] != ["Y", "X"]:
        raise InputError(path, f"expected images with y and x last, found axes {axes!r}")
    if not extra:
        raise InputError(path, f"a single {shape[-2]}×{shape[-1]} image, not a movie")
    if extra[0][0] == "Z":
        log.info("%s: reading the ImageJ slice axis (%d) as time", path, extra[0][1])
    return extra[0][1], kept[-2][1], kept[-1][1]


def _describe(path: Path) -> dict[str, Any]:
    """Series 0 of the TIFF: shape, axes, dtype, data offset, ImageJ metadata, open flags."""
    import tifffile

    flags: dict[str, Any] = {}
    for attempt in range(2):
        with tifffile.TiffFile(path, **flags) as tif:
            series = tif.series
            if not series:
                raise InputError(path, "the TIFF holds no images")
            same = {(s.shape, str(s.dtype)) for s in series}
            if len(series) > 1 and len(same) == 1 and len(series[0].shape) == 2 and not attempt:
                flags = {"is_shaped": False}  # one page per series: read pages as frames
                continue
            s = series[0]
            return {
                "shape": tuple(s.shape),
                "axes": s.axes,
                "dtype": np.dtype(s.dtype).newbyteorder(tif.byteorder),
                "offset": s.dataoffset,
                "imagej": dict(tif.imagej_metadata or {}),
                "flags": flags,
            }
    raise AssertionError("unreachable")  # pragma: no cover


def describe_tiff(path: Path) -> dict[str, Any]:
    """``_describe`` with every tifffile/OS failure turned into InputError."""
    try:
        return _describe(path)
    except InputError:
        raise
    except FileNotFoundError as e:
        raise InputError(path, "no such file") from e
    except Exception as e:  # tifffile raises TiffFileError, ValueError, RuntimeError, ...
        raise InputError(path, f"not a readable TIFF file ({e})") from e


def lazy_frames(path: Path, info: dict[str, Any], shape: tuple[int, int, int]) -> Any:
    """A (time, y, x) dask array of the movie in its stored dtype, reading nothing yet."""
    dtype = info["dtype"]
    frames = rows_per_chunk(shape[1] * shape[2] * dtype.itemsize, shape[0])
    if info["offset"] is not None and dtype.kind in "iuf":
        arr = NumericFile(path, shape, dtype, info["offset"])  # checks the file's size
        return as_dask(arr, (frames, shape[1], shape[2]))
    zf = ZarrFrames(path, info["flags"], info["shape"], dtype.newbyteorder("="))
    axes = list(zip(info["axes"], zf.shape, strict=True))
    chunks = [n if a in "YX" else 1 for a, n in axes]
    chunks[[n != 1 and a not in "YX" for a, n in axes].index(True)] = frames  # the time axis
    return as_dask(zf, tuple(chunks)).reshape(shape)


def frame_rate(path: Path, imagej: dict[str, Any]) -> float | None:
    """The rate ImageJ recorded (1 / ``finterval`` in ``tunit``, or ``fps``), if any."""
    interval, fps = _positive(path, imagej, "finterval"), _positive(path, imagej, "fps")
    if interval is not None:
        unit = str(imagej.get("tunit", "sec")).strip().lower()
        if unit not in TIME_UNITS:
            raise InputError(path, f"unknown ImageJ time unit {unit!r}; pass --fs HZ")
        return 1.0 / (interval * TIME_UNITS[unit])
    return fps


def _positive(path: Path, imagej: dict[str, Any], key: str) -> float | None:
    """A positive finite number from the ImageJ metadata, else None (logged if garbled)."""
    try:
        value = float(imagej.get(key) or 0)
    except (TypeError, ValueError):
        log.warning("%s: ignoring unreadable ImageJ %s=%r", path, key, imagej.get(key))
        return None
    return value if np.isfinite(value) and value > 0 else None


def mean_over_time(grid: Any) -> Any:
    """Mean of the finite samples of each pixel (float64 sums), NaN where none are."""
    import dask.array as da

    finite = da.isfinite(grid)
    total = da.where(finite, grid, 0).sum(axis=0, dtype=np.float64)
    count = finite.sum(axis=0)
    return da.where(count > 0, total / da.maximum(count, 1), np.nan).astype(np.float32)


class MovieReader(Reader):
    """Raw movies in TIFF stacks (tifffile), as a lazy ``grid(time, y, x)``."""

    name = "movie"
    description = "raw movies in TIFF stacks (.tif/.tiff, BigTIFF, ImageJ hyperstacks)"

    def guess_can_open(self, path: Path) -> bool:
        """A TIFF suffix and TIFF magic bytes."""
        try:
            path = Path(path)
            if not path.is_file() or path.suffix.lower() not in SUFFIXES:
                return False
            with open(path, "rb") as fh:
                return fh.read(4) in TIFF_MAGICS
        except Exception:
            return False

    def open(self, path: Path, *, fs: float | None = None) -> xr.Dataset:
        """Read the movie as a Recording with lazy ``grid`` and ``mean_image``."""
        path = Path(path)
        if not os.path.isfile(path):
            raise InputError(path, "no such file" if not path.exists() else "not a file")
        info = describe_tiff(path)
        shape = movie_shape(path, info["shape"], info["axes"])
        fs = resolve_fs(path, fs, frame_rate(path, info["imagej"]))
        grid = lazy_frames(path, info, shape).astype(np.float32)
        if info["dtype"].kind == "f":
            import dask.array as da

            grid = da.where(da.isinf(grid), np.float32(np.nan), grid)
        pix = {"units": "pixels"}
        return new_recording(
            {"grid": (("time", "y", "x"), grid), "mean_image": (("y", "x"), mean_over_time(grid))},
            time=frame_times(shape[0], fs),
            fs=fs,
            source_format="movie",
            source_name=path.name,
            coords={
                "y": ("y", np.arange(shape[1], dtype=np.float64), pix),
                "x": ("x", np.arange(shape[2], dtype=np.float64), pix),
            },
            attrs={"source_version": "tiff", "tiff_axes": info["axes"]},
        )


register(MovieReader)
