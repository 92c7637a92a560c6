"""Model checkpoints: one typed `Checkpoint` that saves, loads safely and builds its model.

On disk a checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``: opening a checkpoint from a collaborator never
runs code. Every entry is checked where it is read (`Checkpoint.load`): a missing or
mistyped entry, a normaliser of the wrong shape or weights that do not fit the model is an
InputError naming the file, never a traceback from deep inside torch. Writes go to a
temporary sibling and are renamed into place (`cst_neuro.atomic`), so a killed process
leaves either the previous checkpoint or the new one, never half of one; with
``replace=False`` an existing file (say, another process's model) is never replaced.

Kinds: ``model`` (a fitted model bound to the recording it was fitted to: its normaliser,
channel descriptors, variable and frame split), ``prior`` (a pretrained model bound to no
recording, `cst_neuro.prior`) and ``progress`` (an unfinished fit or pretraining, with
optimiser and RNG states for ``--resume``). Format version 1 (before the mode registry:
the mode inside ``model_config``, cst-only fields in every mode's config) still loads.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cst_neuro.atomic import OutputKind, write_bytes
from cst_neuro.data import Normalizer
from cst_neuro.errors import CSTNeuroError, InputError
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.layers import NetworkConfig
from cst_neuro.model.modes import Mode, get_mode

FORMAT = "cst-neuro-checkpoint"
FORMAT_VERSION = 2
Kind = Literal["model", "progress", "prior"]
KINDS: tuple[str, ...] = ("model", "progress", "prior")


@dataclass(frozen=True)
class DataBinding:
    """The recording a model was fitted to: what it models and how its frames were split."""

    var: str  # the modelled variable: dff, grid, F
    layout: str  # "traces" or "grid"
    patch: int  # p of p×p grid patches (1 for traces)
    n_channels: int
    fs: float  # Hz
    source_name: str
    fingerprint: str  # `data.data_fingerprint` of the modelled variable
    train_frames: np.ndarray  # (T,) bool: frames training read
    val_frames: np.ndarray  # (T,) bool: frames held out for validation

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["train_frames"] = torch.from_numpy(self.train_frames)
        out["val_frames"] = torch.from_numpy(self.val_frames)
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> DataBinding:
        """Checked: TypeError/ValueError for a wrong type or an inconsistent split."""
        raw = _table(raw, "data")
        frames = {k: _frames(raw.get(k), k) for k in ("train_frames", "val_frames")}
        if frames["train_frames"].shape != frames["val_frames"].shape:
            raise ValueError("data: train_frames and val_frames differ in length")
        return cls(
            var=_typed(raw.get("var"), str, "data.var"),
            layout=_typed(raw.get("layout"), str, "data.layout"),
            patch=_count(raw.get("patch"), "data.patch"),
            n_channels=_count(raw.get("n_channels"), "data.n_channels"),
            fs=_positive(raw.get("fs"), "data.fs"),
            source_name=_typed(raw.get("source_name", ""), str, "data.source_name"),
            fingerprint=_typed(raw.get("fingerprint", ""), str, "data.fingerprint"),
            **frames,
        )


@dataclass
class Checkpoint:
    """A model's weights with everything needed to rebuild, resume or bind it."""

    kind: Kind
    mode: str
    model_config: NetworkConfig
    fit_config: FitConfig
    state_dict: dict[str, torch.Tensor]
    normalizer: Normalizer | None = None  # kind "model"
    features: np.ndarray | None = None  # kind "model": (n_channels, F) channel descriptors
    data: DataBinding | None = None  # kind "model"
    history: list[dict[str, float]] = field(default_factory=list)
    best_val: float = math.inf
    optimizer: dict[str, Any] | None = None  # kind "progress"
    train_state: dict[str, Any] | None = None  # kind "progress": epoch, best weights, RNGs
    data_fingerprint: str = ""  # kind "progress": what `resume` must find again
    info: dict[str, Any] = field(default_factory=dict)  # provenance: prior, pretraining, fit

    @property
    def spec(self) -> Mode:
        return get_mode(self.mode)

    def to_dict(self) -> dict[str, Any]:
        """The on-disk layout: plain data only (``weights_only`` loads it)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "mode": self.mode,
            "model_config": _config_dict(self.model_config),
            "fit_config": self.fit_config.to_dict(),
            "state_dict": self.state_dict,
            "history": self.history,
            "best_val": self.best_val,
            "info": self.info,
        }
        if self.normalizer is not None:
            out["normalizer"] = self.normalizer.to_dict()
        if self.features is not None:
            out["channel_features"] = torch.from_numpy(np.asarray(self.features, np.float32))
        if self.data is not None:
            out["data"] = self.data.to_dict()
        if self.kind == "progress":
            out.update(
                optimizer=self.optimizer,
                train_state=self.train_state,
                data_fingerprint=self.data_fingerprint,
            )
        return out

    def save(self, path: str | os.PathLike[str], *, replace: bool = True) -> Path:
        """Write atomically (`atomic.write_bytes`); ``replace=False`` never replaces a file:
        of two processes writing the same new output, the second gets an OutputError."""
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)  # in memory: torch reports a full disk as RuntimeError
        return write_bytes(path, buffer.getbuffer(), replace=replace)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Load and check a checkpoint without executing code; InputError for anything else."""
        raw = _read(Path(path))
        with checked_contents(path):
            return cls._from_dict(raw, path)

    @classmethod
    def _from_dict(cls, raw: dict[str, Any], path: str | os.PathLike[str]) -> Checkpoint:
        version = raw.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"format_version must be an integer, got {version!r}")
        model_config = dict(_table(raw.get("model_config"), "model_config"))
        mode_name = raw.get("mode") if version >= 2 else model_config.pop("mode", "cst")
        mode = get_mode(_typed(mode_name, str, "mode"))
        if version < 2:  # one config held every mode's fields: keep this mode's
            accepted = {f.name for f in fields(mode.config_type())}
            model_config = {k: v for k, v in model_config.items() if k in accepted}
        if isinstance(model_config.get("fourier_scale"), list):
            model_config["fourier_scale"] = tuple(model_config["fourier_scale"])
        kind = raw.get("kind")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        state_dict = _table(raw.get("state_dict"), "state_dict")
        if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
            raise TypeError("state_dict holds something other than tensors")
        fit_config = FitConfig.from_dict(
            {**_table(raw.get("fit_config"), "fit_config"), "mode": mode.name},
            source=path,
        )
        normalizer = data = features = None
        if kind == "model":
            data = DataBinding.from_dict(raw.get("data"))
            normalizer = _normalizer(raw.get("normalizer"), data.n_channels)
            if "channel_features" in raw:
                features = _features(raw["channel_features"], data.n_channels)
        info = _table(raw.get("info", {}), "info")
        best_val = raw.get("best_val", math.inf)
        if isinstance(best_val, bool) or not isinstance(best_val, int | float):
            raise TypeError(f"best_val must be a number, got {best_val!r}")
        return cls(
            kind=kind,
            mode=mode.name,
            model_config=mode.make_config(model_config),
            fit_config=fit_config,
            state_dict=state_dict,
            normalizer=normalizer,
            features=features,
            data=data,
            history=list(raw.get("history", [])),
            best_val=float(best_val),
            optimizer=raw.get("optimizer"),
            train_state=raw.get("train_state"),
            data_fingerprint=str(raw.get("data_fingerprint", "")),
            info=info,
        )

    def build_model(self) -> nn.Module:
        """The network with these weights, in eval mode on the CPU."""
        model = self.spec.build(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint cst-neuro wrote, read without unpickling anything.

    ``torch.save`` writes a zip archive whose ``data.pkl`` holds the pickled dict; a
    cst-neuro checkpoint's has the format name `FORMAT` in it.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            return len(pickles) == 1 and FORMAT.encode() in zf.read(pickles[0])
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error):
        return False


# what `--overwrite` may replace where a command writes a checkpoint (`atomic.check_output`)
CHECKPOINT = OutputKind("a checkpoint written by cst-neuro", folder=False, recognise=is_checkpoint)


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, Checkpoint]:
    """A fitted model (eval mode, CPU) and its checkpoint; InputError for anything else."""
    checkpoint = Checkpoint.load(path)
    if checkpoint.kind != "model":
        raise InputError(
            path,
            "is a calcium prior, not a model fitted to a recording: bind it with "
            "`cst-neuro fit REC -o MODEL --prior PRIOR --max-epochs 0`"
            if checkpoint.kind == "prior"
            else "is an unfinished training checkpoint, not a model (fit --resume continues it)",
        )
    with checked_contents(path):
        return checkpoint.build_model(), checkpoint


@contextmanager
def checked_contents(path: str | os.PathLike[str]) -> Iterator[None]:
    """Report a damaged checkpoint structure as an InputError naming ``path``.

    Loading is safe (plain data only), but a hand-made or corrupted checkpoint can still
    lack entries, hold the wrong types, or carry weights of another shape; building the
    model from it then fails inside torch or the dataclasses, which is the file's fault.
    """
    try:
        yield
    except CSTNeuroError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise InputError(
            path, f"damaged cst-neuro checkpoint ({type(e).__name__}: {detail})"
        ) from e


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(path, f"not a loadable cst-neuro checkpoint ({reason})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(path, "not a cst-neuro checkpoint")
    version = raw.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise InputError(path, "checkpoint is from a newer cst-neuro; upgrade to load it")
    return raw


def _config_dict(config: NetworkConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)}


def _table(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a table, got {type(value).__name__}")
    return value


def _typed(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {kind.__name__}, got {value!r}")
    return value


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _positive(value: Any, name: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _frames(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or value.dim() != 1:
        raise TypeError(f"data.{name} must be a 1-d bool tensor")
    return value.numpy()


def _normalizer(raw: Any, n_channels: int) -> Normalizer:
    raw = _table(raw, "normalizer")
    parts = {}
    for key in ("mean", "std"):
        t = raw.get(key)
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != n_channels:
            raise ValueError(f"normalizer.{key} must be a ({n_channels}, V) tensor")
        if not torch.isfinite(t).all():
            raise ValueError(f"normalizer.{key} holds non-finite values")
        parts[key] = t.to(torch.float32).numpy()
    if parts["mean"].shape != parts["std"].shape or (parts["std"] <= 0).any():
        raise ValueError("normalizer.std must be positive and shaped like normalizer.mean")
    return Normalizer(mean=parts["mean"], std=parts["std"])


def _features(raw: Any, n_channels: int) -> np.ndarray:
    if not isinstance(raw, torch.Tensor) or raw.dim() != 2 or raw.shape[0] != n_channels:
        raise ValueError(f"channel_features must be a ({n_channels}, F) tensor")
    if not torch.isfinite(raw).all():
        raise ValueError("channel_features holds non-finite values")
    return raw.to(torch.float32).numpy()
