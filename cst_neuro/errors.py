"""The package's own exception types.

Every reader, writer and command raises one of these for bad input, with a one-line
message that names the file and the problem; the CLI turns them into ``error: ...`` and
exit code 2. Anything else escaping is a bug.
"""

from __future__ import annotations

import os


class CSTNeuroError(Exception):
    """Base class for every error the package raises on purpose."""


class InputError(CSTNeuroError, ValueError):
    """An input file or folder is missing, unreadable, malformed or inconsistent."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        message = problem if self.path is None else f"{self.path}: {problem}"
        super().__init__(" ".join(message.split()))


class UnsafePickleError(InputError):
    """A pickled file asked for something other than plain data (possible code execution)."""


class SchemaError(InputError):
    """A store or dataset does not follow the Recording schema this version understands."""


class OutputError(CSTNeuroError, OSError):
    """An output cannot be written (exists without --overwrite, read-only, disk full...)."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(" ".join(f"{self.path}: {problem}".split()))
