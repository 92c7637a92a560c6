"""Lazy, validated access to numeric ``.npy`` and raw binary files.

Recordings can be far larger than memory. ``NumericFile`` parses the header, checks that
the file really holds the bytes its header promises (a truncated copy is an error, not a
short array), and reads only the requested block with positioned reads. Unlike a memmap,
the pages read are not mapped into the process, so peak RSS stays bounded by the block
size. It exposes ``shape``/``dtype``/``__getitem__`` and so works with ``dask.array``.
"""

from __future__ import annotations

import os
import tokenize
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from cst_neuro.errors import InputError

# Target bytes of one lazy block (a dask chunk) everywhere in the library: small enough
# that the few blocks in flight per thread keep ingest well under 1 GB, large enough that
# per-task overhead stays negligible.
CHUNK_BYTES = 16 * 2**20


def read_error(
    path: str | os.PathLike[str], error: OSError, *, expected: str = "a file"
) -> InputError:
    """The package's one-line error for an OS failure to read ``path``."""
    if isinstance(error, FileNotFoundError):
        return InputError(path, "no such file")
    if isinstance(error, IsADirectoryError):
        return InputError(path, f"expected {expected}, found a folder")
    return InputError(path, f"cannot read file ({error.strerror or error})")


def rows_per_chunk(row_nbytes: int, n_rows: int) -> int:
    """How many rows of ``row_nbytes`` make one block of about ``CHUNK_BYTES``."""
    return max(1, min(max(n_rows, 1), CHUNK_BYTES // max(row_nbytes, 1)))


class NumericFile:
    """A read-only, lazily read C-ordered numeric array stored at ``offset`` in ``path``."""

    def __init__(
        self, path: str | os.PathLike[str], shape: tuple[int, ...], dtype: np.dtype, offset: int
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.offset = int(offset)
        if self.dtype.hasobject or self.dtype.kind not in "biuf":
            raise InputError(self.path, f"expected numeric data, found dtype {self.dtype}")
        needed = self.offset + int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        size = _file_size(self.path)
        if size < needed:
            raise InputError(
                self.path,
                f"file is truncated: header promises shape {self.shape} {self.dtype} "
                f"({needed} bytes) but the file has {size} bytes",
            )

    @property
    def row_nbytes(self) -> int:
        """Bytes in one index of the first axis."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the first axis, read with one positioned read."""
        start, stop = max(0, start), min(self.shape[0], stop)
        n = max(0, stop - start)
        out = np.empty((n, *self.shape[1:]), dtype=self.dtype)
        if n == 0 or out.nbytes == 0:
            return out
        buf = out.reshape(-1).view(np.uint8).data  # a writable memoryview of ``out``
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise InputError(self.path, f"cannot open file ({e.strerror})") from e
        try:
            pos, done = self.offset + start * self.row_nbytes, 0
            while done < out.nbytes:
                got = os.preadv(fd, [buf[done:]], pos + done)
                if got == 0:
                    raise InputError(self.path, "file ended early while reading (truncated?)")
                done += got
        except OSError as e:
            raise InputError(self.path, f"read failed ({e.strerror})") from e
        finally:
            os.close(fd)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first = key[0] if key else slice(None)
        rest = key[1:]
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            if step < 0:
                return self[(slice(None), *rest)][first]
            block = self.read_rows(start, max(start, stop))
            return block[(slice(None, None, step), *rest)]
        if isinstance(first, int | np.integer):
            i = int(first) + (self.shape[0] if first < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"index {first} out of range for axis 0 of {self.shape[0]}")
            return self.read_rows(i, i + 1)[(0, *rest)]
        idx = np.arange(self.shape[0])[first]
        if idx.size == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
        block = self.read_rows(int(idx.min()), int(idx.max()) + 1)
        return block[(idx - idx.min(), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.read_rows(0, self.shape[0])
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"NumericFile({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def read_npy_header(
    fh: IO[bytes], source: str | os.PathLike[str]
) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the ``.npy`` header at ``fh``'s position.

    The one parser of ``.npy`` headers (files, ``.npz`` members, pickled Suite2p files);
    a garbled header is an InputError naming ``source``; ``fh`` is left at the data.
    """
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        return np.lib.format.read_array_header_2_0(fh)
    except (ValueError, SyntaxError, EOFError, tokenize.TokenError) as e:
        raise InputError(source, f"not a valid .npy file ({e})") from e


def open_npy(path: str | os.PathLike[str]) -> NumericFile | np.ndarray:
    """Open a numeric ``.npy`` lazily (C order) or load it (Fortran order, small files)."""
    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):  # a pipe would block
        raise InputError(path, "is not a regular file (a pipe or a device?)")
    try:
        with open(path, "rb") as fh:
            shape, fortran, dtype = read_npy_header(fh, path)
            offset = fh.tell()
    except OSError as e:
        raise read_error(path, e, expected="a .npy file") from e
    if dtype.hasobject:
        raise InputError(path, "expected a numeric array, found pickled objects")
    if fortran and len(shape) > 1:
        lazy = NumericFile(path, shape[::-1], dtype, offset)  # validates size
        return np.ascontiguousarray(lazy.read_rows(0, lazy.shape[0]).T)
    return NumericFile(path, shape, dtype, offset)


def open_raw(
    path: str | os.PathLike[str], dtype: np.dtype, frame_shape: tuple[int, ...]
) -> NumericFile:
    """Open a headerless binary of frames (Suite2p ``data.bin``: int16, (nframes, Ly, Lx))."""
    path = Path(path)
    frame_bytes = int(np.prod(frame_shape)) * np.dtype(dtype).itemsize
    size = _file_size(path)
    if frame_bytes == 0 or size % frame_bytes:
        raise InputError(
            path,
            f"size {size} bytes is not a whole number of {frame_shape} {np.dtype(dtype)} "
            "frames (truncated, or the wrong Ly/Lx)",
        )
    return NumericFile(path, (size // frame_bytes, *frame_shape), np.dtype(dtype), 0)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise read_error(path, e) from e


class LazyArray(Protocol):
    """What ``as_dask`` wraps: shape, dtype, ndim and numpy indexing (read on demand)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    ndim: int

    def __getitem__(self, key: Any) -> np.ndarray: ...


def as_dask(array: LazyArray | np.ndarray, chunks: Any) -> Any:
    """Wrap a lazy file (or an in-memory array) as a dask array without reading it."""
    import dask.array as da

    meta = np.empty((0,) * array.ndim, array.dtype)
    return da.from_array(array, chunks=chunks, asarray=False, lock=False, meta=meta)
