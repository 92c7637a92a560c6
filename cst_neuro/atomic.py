"""Atomic writes of files and folders, and what ``--overwrite`` may replace.

Every file or folder the package writes is filled under a hidden temporary sibling and
renamed into place only when complete, so a killed process leaves the previous output or
the new one, never half of one. One naming scheme, ``.NAME.KIND-HOST-PID-RANDOM``
(``temporary_sibling``), lets one cleanup (``remove_stale``) find the temporaries of killed
writers of this host at the next write of the same output. Files are fsynced before the
rename and the folder after it.

- ``atomic_file(path, replace=...)`` yields a temporary path to write (any writer: numpy,
  tifffile, matplotlib); ``write_bytes`` / ``write_text`` wrap it for data in memory.
  With ``replace=False`` the file is hard-linked into place, which fails if ``path``
  exists: of two processes writing the same new output, the second gets an OutputError.
- ``atomic_folder(path, overwrite=...)`` yields a temporary folder (zarr stores, reports).
- ``check_output(path, kind, overwrite=...)`` is the overwrite scope: an existing output is
  replaced only with ``overwrite`` and only if ``kind`` recognises it as one of its own (a
  store, a checkpoint, a simulation...), never an arbitrary file or folder, never an input.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cst_neuro.errors import OutputError


@dataclass(frozen=True)
class OutputKind:
    """What a command writes (``what``, e.g. "a zarr store") and how to recognise one.

    ``recognise(path)`` says whether an existing ``path`` is an earlier output of this
    kind (it must not raise); only such a path may be replaced with ``--overwrite``.
    """

    what: str
    folder: bool
    recognise: Callable[[Path], bool]


def check_output(
    path: str | os.PathLike[str],
    kind: OutputKind,
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Fail early (before any work) unless ``path`` may be written as a new ``kind``.

    An existing ``path`` needs ``overwrite`` and must be recognised by ``kind``. A symbolic
    link to an output is resolved: the output it points to is checked, and the returned
    path (write there) replaces it in place, so no link or old copy is left behind. ``inputs`` are
    the paths the command reads: an output that is one of them, lies inside one, or
    contains one is refused. The parent folder must exist and be writable.
    """
    path = Path(path)
    if path.is_symlink():
        if not path.exists():
            raise OutputError(path, "is a broken symbolic link; remove it or write elsewhere")
        path = Path(os.path.realpath(path))  # replace what it points to, in place
    exists = path.exists()
    if exists and not overwrite:
        raise OutputError(path, "already exists; pass --overwrite to replace it")
    check_not_an_input(path, inputs)
    if exists and not _recognised(kind, path):
        found = "folder" if path.is_dir() else "file" if path.is_file() else "special file"
        raise OutputError(path, f"exists and is a {found} but not {kind.what}; not replacing it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(path, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(path, f"output folder {parent} is not writable")
    return path


def _recognised(kind: OutputKind, path: Path) -> bool:
    if kind.folder != path.is_dir() or not (path.is_dir() or path.is_file()):
        return False
    try:
        return bool(kind.recognise(path))
    except OSError:
        return False


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


# ---- temporaries ----------------------------------------------------------------------


def temporary_sibling(path: Path, kind: str = "partial") -> Path:
    """A hidden sibling ``.NAME.KIND-HOST-PID-RANDOM`` of ``path`` (see ``remove_stale``).

    ``kind`` says what it holds: ``partial`` (being written), ``replaced`` (an old output
    on its way out).
    """
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
            _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- files ----------------------------------------------------------------------------


@contextmanager
def atomic_file(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; fsynced and renamed onto ``path`` after.

    With ``replace=False`` an existing ``path`` is never replaced: the block's file is
    linked into place and an OutputError says another process created ``path``
    meanwhile. On any error the temporary is removed (OSError becomes an OutputError).
    """
    path = Path(path)
    remove_stale(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            link_new(tmp, path)
        _fsync_folder(path.parent)
    except FileExistsError as e:
        raise OutputError(
            path, "was created by another process while this one was running; left as is"
        ) from e
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(path, f"write failed ({e.strerror or e})") from e
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *, replace: bool = True
) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_file`` for ``replace``)."""
    path = Path(path)
    with atomic_file(path, replace=replace) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike[str], text: str, *, replace: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_file`` for ``replace``)."""
    return write_bytes(path, text.encode("utf-8"), replace=replace)


def link_new(tmp: Path, path: Path) -> None:
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


# ---- folders --------------------------------------------------------------------------


@contextmanager
def atomic_folder(
    path: str | os.PathLike[str], *, overwrite: bool, create: bool = True
) -> Iterator[Path]:
    """A hidden sibling of ``path`` to fill, renamed onto ``path`` when the block succeeds.

    On any error the temporary is removed (OSError becomes an OutputError naming ``path``),
    so ``path`` is only ever absent, the previous output or the complete new one. Without
    ``overwrite`` a folder that another process put at ``path`` meanwhile is never
    replaced. With ``create`` the temporary folder is made empty; else the block creates it.
    """
    path = Path(path)
    remove_stale(path)
    tmp = temporary_sibling(path)
    try:
        if create:
            tmp.mkdir()
        yield tmp
        _swap_into_place(tmp, path, overwrite=overwrite)
        _fsync_folder(path.parent)
    except OutputError:
        _remove(tmp)
        raise
    except OSError as e:
        _remove(tmp)
        raise OutputError(path, f"write failed ({e.strerror or e})") from e
    except BaseException:
        _remove(tmp)
        raise


def _swap_into_place(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename the finished folder into place; replace an existing one only if ``overwrite``."""
    if not overwrite:
        try:
            os.rename(tmp, path)  # fails on an existing (non-empty) folder: never replaced
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise OutputError(
                    path, "was created by another process while this one was writing; left as is"
                ) from e
            raise
        return
    old = None
    if path.exists() or path.is_symlink():
        old = temporary_sibling(path, "replaced")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        _remove(old)
