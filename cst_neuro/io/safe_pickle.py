"""Loading pickled user files (Suite2p stat.npy/ops.npy, CaImAn .npz) without running code.

``pickle`` executes whatever callable a file names. A restricted unpickler resolves only an
allow-list of constructors for plain data: numpy arrays, dtypes and scalars, builtin
containers, strings and numbers, datetimes (Suite2p 0.x stores ``date_proc``), and, on
request, scipy sparse matrices (CaImAn footprints). Anything else raises
UnsafePickleError before it is imported or called.
"""

from __future__ import annotations

import collections
import datetime
import importlib
import io
import os
import pickle
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cst_neuro.errors import InputError, UnsafePickleError
from cst_neuro.io.npy import read_npy_header


def _numpy_data_globals() -> dict[tuple[str, str], Any]:
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for name in dir(np.dtypes):
        obj = getattr(np.dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            allowed[("numpy.dtypes", name)] = obj
    return allowed


_PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
}


def _sparse_globals() -> dict[tuple[str, str], Any]:
    import copyreg

    import scipy.sparse as sp

    newobj = copyreg.__dict__["__newobj__"]  # a helper typeshed does not list
    allowed: dict[tuple[str, str], Any] = {("copyreg", "__newobj__"): newobj}
    for cls in (sp.csc_matrix, sp.csr_matrix, sp.coo_matrix, sp.csc_array, sp.csr_array):
        short = cls.__module__.rsplit(".", 1)[-1].lstrip("_")  # scipy < 1.8 had no underscore
        for module in {cls.__module__, "scipy.sparse", f"scipy.sparse.{short}"}:
            allowed[(module, cls.__name__)] = cls
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any]) -> None:
        super().__init__(file, encoding="latin1")
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                None, f"refused to load {module}.{name}: only plain data may be unpickled"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(None, "refused a persistent reference in the pickle")


def safe_unpickle(
    file: BinaryIO, *, source: str | os.PathLike[str], allow_sparse: bool = False
) -> Any:
    """Unpickle plain data from ``file``; raise UnsafePickleError/InputError naming ``source``."""
    allowed = {**_numpy_data_globals(), **_PLAIN_GLOBALS}
    if allow_sparse:
        allowed.update(_sparse_globals())
    try:
        return _RestrictedUnpickler(file, allowed).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(source, e.problem) from None
    except MemoryError as e:
        raise InputError(source, "pickled data asks for more memory than is available") from e
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        UnicodeDecodeError,
    ) as e:
        raise InputError(source, f"corrupt or truncated pickle ({type(e).__name__}: {e})") from e


def load_npy_object(path: str | os.PathLike[str], *, allow_sparse: bool = False) -> Any:
    """Load an object ``.npy`` (a pickled array) safely; 0-d arrays return their item."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            header = read_npy_header(fh, path)
            if header[2] != np.dtype(object):
                arr = np.load(path, allow_pickle=False)
                return arr
            arr = safe_unpickle(fh, source=path, allow_sparse=allow_sparse)
    except OSError as e:
        raise InputError(path, f"cannot read file ({e.strerror or e})") from e
    if not isinstance(arr, np.ndarray):
        raise InputError(path, f"expected a pickled numpy array, found {type(arr).__name__}")
    return arr.item() if arr.shape == () else arr


def load_npz_object(path: str | os.PathLike[str], key: str, *, allow_sparse: bool = False) -> Any:
    """Load member ``key`` of an ``.npz`` archive, unpickling object members safely."""
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            raw = zf.read(f"{key}.npy")
    except KeyError as e:
        raise InputError(path, f"archive has no array named {key!r}") from e
    except (OSError, EOFError, NotImplementedError, zlib.error, zipfile.BadZipFile) as e:
        raise InputError(path, f"not a readable .npz archive ({e})") from e
    fh = io.BytesIO(raw)
    _shape, _fortran, dtype = read_npy_header(fh, path)
    if dtype != np.dtype(object):
        fh.seek(0)
        try:
            return np.load(fh, allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            raise InputError(path, f"member {key!r} is corrupt ({e})") from e
    arr = safe_unpickle(fh, source=f"{path}[{key}]", allow_sparse=allow_sparse)
    return arr.item() if isinstance(arr, np.ndarray) and arr.shape == () else arr
