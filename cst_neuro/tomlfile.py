"""TOML settings files (fit, batch, evaluation configs), read with one-line errors."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from cst_neuro.errors import InputError


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The table in a TOML file; InputError naming the file when it is missing or invalid."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise InputError(path, "no such config file") from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(path, f"not a valid TOML file ({e})") from e
