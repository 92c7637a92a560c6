"""MATLAB ``.mat`` files: which version a header says, and one safe loader for all of them.

``mat_version`` sniffs a header (the one place that knows MATLAB's signatures);
``load_mat`` is the only way the package reads MAT v4/v5 files (readers and evaluation
alike). It checks MAT v5 files structurally before scipy parses them: scipy's MAT v5
reader (``scipy.io.matlab._mio5_utils``, Cython) trusts the type code of each data element:
a numeric element whose type has no NumPy dtype (0, 8, 10, 11, a nested matrix 14,
compressed 15, or anything above 18) is looked up in a C array of dtype pointers and
crashes the interpreter (segmentation fault) instead of raising. A damaged or hand-made
file must not take the process down, so ``check_mat5`` walks the element tree first
(MAT-File Format, MathWorks, "Data Element Format" and "miMATRIX Format") and raises
InputError where a tag is impossible: unknown type codes, sizes beyond the enclosing
element, a matrix in a numeric slot, or a numeric matrix without its data elements.
MATLAB 7.3 files are HDF5 and are read with h5py, not here.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from cst_neuro.errors import InputError
from cst_neuro.io.npy import read_error

HEADER_BYTES = 128
MI_MATRIX, MI_COMPRESSED = 14, 15
NUMERIC_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})  # have a dtype
CONTAINER_CLASSES = frozenset({1, 2, 3, 17})  # cell, struct, object, opaque: hold matrices
SPARSE_CLASS = 5
COMPLEX_FLAG = 1 << 11
MAX_DEPTH = 64  # nested cells/structs deeper than this are refused (stack safety)


def mat_version(head: bytes) -> str | None:
    """``"7.3"`` (HDF5 inside), ``"5"`` (a MAT v5 header) or None from a file's first bytes.

    MAT v4 files have no signature: None, as for files that are not MATLAB's.
    """
    if head.startswith(b"MATLAB 7.3"):
        return "7.3"
    if head.startswith(b"MATLAB") or is_mat5(head):
        return "5"
    return None


def load_mat(path: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """``scipy.io.loadmat(path, **options)`` behind the crash guard; InputError naming ``path``.

    The file is read once; a MAT v5 file is checked structurally (``check_mat5``) before
    scipy parses it, and any parser failure becomes one InputError.
    """
    import scipy.io

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise read_error(path, e, expected="a .mat file") from e
    if is_mat5(data):
        check_mat5(data, path)  # scipy's C parser crashes on some damaged files
    try:
        return scipy.io.loadmat(io.BytesIO(data), **options)
    except Exception as e:  # scipy's parser raises a dozen unrelated types on damaged files
        raise InputError(path, f"not a readable MATLAB .mat file ({e})") from e


def is_mat5(data: bytes) -> bool:
    """Whether ``data`` starts with a MAT v5 header (version 0x0100 and an endian mark)."""
    if len(data) < HEADER_BYTES or data[126:128] not in (b"IM", b"MI"):
        return False
    order = "<" if data[126:128] == b"IM" else ">"
    return struct.unpack_from(f"{order}H", data, 124)[0] == 0x0100


def check_mat5(data: bytes, path: str | os.PathLike[str]) -> None:
    """Raise InputError naming ``path`` unless every element of a MAT v5 file is well formed."""
    order = "<" if data[126:128] == b"IM" else ">"
    walker = _Walker(order, path)
    pos = HEADER_BYTES
    while pos < len(data):
        mdtype, count, start = walker.tag(data, pos, len(data))
        if mdtype == MI_COMPRESSED:
            inner = walker.inflate(data[start : start + count])
            inner_type, inner_count, inner_start = walker.tag(inner, 0, len(inner))
            if inner_type != MI_MATRIX:
                walker.fail(f"compressed element holds type {inner_type}, not a matrix")
            walker.matrix(inner, inner_start, inner_start + inner_count, 0)
        elif mdtype == MI_MATRIX:
            walker.matrix(data, start, start + count, 0)
        else:
            walker.fail(f"top-level element of type {mdtype} at byte {pos}, not a variable")
        pos = start + count


class _Walker:
    """Reads tags in one byte order and reports problems against one file."""

    def __init__(self, order: str, path: str | os.PathLike[str]) -> None:
        self.order, self.path = order, path

    def fail(self, problem: str) -> None:
        raise InputError(self.path, f"not a readable MATLAB .mat file (damaged: {problem})")

    def tag(self, buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
        """(type, byte count, data start) of a full tag at ``pos``, bounded by ``end``."""
        if end - pos < 8:
            self.fail(f"element tag at byte {pos} is cut short")
        mdtype, count = struct.unpack_from(f"{self.order}II", buf, pos)
        if mdtype >> 16:  # small data element: never a top-level variable or a matrix
            return mdtype & 0xFFFF, 0, pos + 8
        if count > end - pos - 8:
            self.fail(f"element at byte {pos} claims {count} bytes; only {end - pos - 8} follow")
        return mdtype, count, pos + 8

    def inflate(self, raw: bytes) -> bytes:
        try:
            return zlib.decompress(raw)
        except zlib.error as e:
            self.fail(f"compressed variable does not decompress ({e})")
        raise AssertionError("unreachable")  # pragma: no cover

    def matrix(self, buf: bytes, pos: int, end: int, depth: int) -> None:
        """Check the sub-elements of one miMATRIX spanning ``buf[pos:end]``."""
        if depth > MAX_DEPTH:
            self.fail(f"variables nested more than {MAX_DEPTH} deep")
        if pos == end:
            return  # an empty matrix
        if end - pos < 16:
            self.fail(f"matrix at byte {pos} is too short for its array flags")
        flags = struct.unpack_from(f"{self.order}I", buf, pos + 8)[0]
        mclass, at, numeric = flags & 0xFF, pos, 0
        while pos < end:
            mdtype, count, start = self.sub_element(buf, pos, end)
            if mdtype == MI_MATRIX:
                if mclass not in CONTAINER_CLASSES:
                    self.fail(f"a matrix inside a class-{mclass} array at byte {pos}")
                self.matrix(buf, start, start + count, depth + 1)
            else:
                numeric += 1
            pos = min(end, start + count + (-count % 8))
        if mclass not in CONTAINER_CLASSES:
            # flags, dims, name, then the data: real [imag], or sparse ir, jc, real [imag]
            needed = 4 + (2 if mclass == SPARSE_CLASS else 0) + bool(flags & COMPLEX_FLAG)
            if numeric < needed:
                self.fail(f"class-{mclass} array at byte {at} lacks its data elements")

    def sub_element(self, buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
        """A sub-element's tag, refusing type codes scipy cannot read safely."""
        if end - pos < 8:
            self.fail(f"element tag at byte {pos} is cut short")
        first = struct.unpack_from(f"{self.order}I", buf, pos)[0]
        if first >> 16:  # small data element: type in the low half, 1-4 bytes inline
            if (first & 0xFFFF) not in NUMERIC_TYPES or (first >> 16) > 4:
                self.fail(f"small element at byte {pos} has type {first & 0xFFFF}")
            return first & 0xFFFF, 0, pos + 8
        mdtype, count, start = self.tag(buf, pos, end)
        if mdtype != MI_MATRIX and mdtype not in NUMERIC_TYPES:
            self.fail(f"element at byte {pos} has unknown type {mdtype}")
        return mdtype, count, start
