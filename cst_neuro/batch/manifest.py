"""The batch manifest: what each recording's outputs were made from, so reruns skip them.

``OUTDIR/manifest.json`` maps each recording's name to its input path, its input hash,
its last status and error, and, per finished step, the step's *key* (a hash of the
step's input and settings, chained through the steps it depends on), when it finished,
how long it took and its metrics. A step whose key is unchanged and whose output exists
is skipped; a changed input or setting changes the key of that step and of every step
downstream, so exactly those run again.

Only the process that drives the batch (the Dask client) writes the manifest, after
each step completes, always as a whole new file renamed over the old one; a lock file
keeps two batch runs from sharing one output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cst_neuro.atomic import write_text
from cst_neuro.errors import InputError, OutputError

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".batch.lock"
FORMAT = "cst-neuro-batch-manifest"
FORMAT_VERSION = 1
_BLOCK = 16 << 20  # bytes read at a time when hashing file contents


def hash_input(path: str | os.PathLike[str], *, mode: str = "content") -> str:
    """BLAKE2b of a file or folder: relative paths and contents (or sizes and mtimes).

    ``mode="content"`` reads every byte once (robust to copies and touches); ``"stat"``
    hashes sizes and modification times only, for inputs too large to read on every run.
    Hidden files (names starting with ``.``, e.g. partial writes) are ignored.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    files = [path] if path.is_file() else sorted(_visible_files(path))
    digest = hashlib.blake2b(digest_size=16)
    for file in files:
        rel = file.relative_to(path).as_posix() if file != path else file.name
        try:
            st = file.stat()
            digest.update(f"{rel}\0{st.st_size}\0".encode())
            if mode == "stat":
                digest.update(str(st.st_mtime_ns).encode())
            else:
                with open(file, "rb") as fh:
                    while block := fh.read(_BLOCK):
                        digest.update(block)
        except OSError as e:
            raise InputError(file, f"cannot read ({e.strerror or e})") from e
    return digest.hexdigest()


def _visible_files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(root) / n for n in names if not n.startswith(".")]
    return out


def step_key(step: str, upstream: list[str], settings: dict[str, Any]) -> str:
    """The key of a step: its name, the keys it depends on and its settings, hashed."""
    text = json.dumps([step, upstream, settings], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Manifest:
    """The manifest of one output folder (in memory; ``save`` writes it atomically)."""

    def __init__(self, path: Path, recordings: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.recordings = recordings

    @classmethod
    def load(cls, outdir: str | os.PathLike[str]) -> Manifest:
        """The folder's manifest, or an empty one if there is none yet."""
        path = Path(outdir) / MANIFEST_NAME
        if not path.exists():
            return cls(path, {})
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(
                path, f"unreadable batch manifest ({e}); delete it to run every step again"
            ) from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise InputError(path, "not a cst-neuro batch manifest")
        if int(raw.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(path, "written by a newer cst-neuro; upgrade to resume this batch")
        return cls(path, dict(raw.get("recordings", {})))

    def entry(self, name: str) -> dict[str, Any]:
        """A recording's record (created empty on first use)."""
        return self.recordings.setdefault(name, {"steps": {}})

    def step(self, name: str, step: str) -> dict[str, Any] | None:
        """What the manifest knows about a finished step, or None."""
        return self.recordings.get(name, {}).get("steps", {}).get(step)

    def recorded_keys(self, name: str) -> dict[str, str]:
        """Step → key of the finished steps of a recording."""
        return {s: rec["key"] for s, rec in self.recordings.get(name, {}).get("steps", {}).items()}

    def start(self, name: str, source: str) -> None:
        """Mark a recording as running from ``source``."""
        entry = self.entry(name)
        entry.update(input=source, status="running", error="")

    def finish_step(
        self, name: str, step: str, *, key: str, duration_s: float, metrics: dict[str, Any],
        input_hash: str | None = None,
    ) -> None:  # fmt: skip
        """Record a step that ran to completion."""
        entry = self.entry(name)
        if input_hash is not None:
            entry["input_hash"] = input_hash
        entry["steps"][step] = {
            "key": key,
            "finished": _now(),
            "duration_s": round(duration_s, 3),
            "metrics": metrics,
        }

    def end(self, name: str, *, status: str, error: str = "") -> None:
        """Record how a recording's run ended (``ok`` or ``failed``)."""
        self.entry(name).update(status=status, error=error)

    def save(self) -> Path:
        """Write the manifest atomically (temporary sibling, fsync, rename)."""
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "recordings": self.recordings}
        write_text(self.path, json.dumps(doc, indent=1, sort_keys=True, default=str))
        return self.path


class BatchLock:
    """An exclusive lock on an output folder, held while one batch run drives it.

    The lock file names the host and process; a lock left by a dead process on this host
    is taken over, one held elsewhere or by a live process is an error.
    """

    def __init__(self, outdir: str | os.PathLike[str]) -> None:
        self.path = Path(outdir) / LOCK_NAME
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def __enter__(self) -> BatchLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    holder = self._holder() or "another process"
                    raise OutputError(
                        self.path.parent,
                        f"another batch run ({holder}) is using this folder; wait for it, "
                        f"or delete {self.path.name} if it is gone",
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            except OSError as e:
                raise OutputError(self.path.parent, f"cannot lock ({e.strerror or e})") from e
            with os.fdopen(fd, "w") as fh:
                fh.write(self.owner)
            return self
        raise OutputError(self.path.parent, "cannot take the batch lock")

    def __exit__(self, *exc: object) -> None:
        if self._holder() == self.owner:
            self.path.unlink(missing_ok=True)

    def _holder(self) -> str | None:
        try:
            return self.path.read_text().strip()
        except OSError:
            return None

    def _stale(self) -> bool:
        """Whether the lock's owner is a process of this host that no longer runs."""
        holder = self._holder()
        if holder is None:
            return True
        host, _, pid = holder.rpartition(" ")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
