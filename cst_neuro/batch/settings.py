"""Batch settings: one TOML file with a section per step, read and checked before any work.

```toml
[ingest]        # the options of ``cst-neuro ingest`` (format, fs, baseline, all_rois, grid_bin...)
[fit]           # FitConfig fields; [fit.model] holds CSTConfig overrides
[reconstruct]   # upsample = K
[evaluate]      # evaluate_store: task, factor, methods, seeds, max_minutes, fraction...;
                # [evaluate.fit] holds FitConfig overrides for the evaluation's model fits
[batch]         # device, torch_threads, gpu, hash
```

Every section is optional; an unknown section or key is an error naming the file, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_neuro.errors import InputError
from cst_neuro.ingest import BASELINES
from cst_neuro.tomlfile import read_toml

INGEST_OPTIONS = (
    "format", "fs", "time_axis", "neuropil", "baseline", "all_rois", "grid_bin", "key", "dims",
    "series", "swap_xy",
)  # fmt: skip
HASH_MODES = ("content", "stat")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class EvaluateSettings:
    """Arguments of ``cst_neuro.evaluate.evaluate_store`` for the evaluate step."""

    task: str = "upsample"
    factor: int = 4
    methods: tuple[str, ...] | None = None  # None: the evaluation's default methods
    seeds: int = 1
    max_minutes: float | None = None  # the evaluation's whole budget (its default if None)
    fraction: float = 0.2  # in-filling: share of hidden samples
    block: int = 1  # in-filling: frames per hidden run
    horizon: int = 4  # forecasting: frames ahead
    fit: dict[str, Any] | None = None  # [evaluate.fit]: FitConfig overrides for the model fits


@dataclass(frozen=True)
class BatchSettings:
    """Everything a batch run needs besides its inputs; the same settings give the same keys."""

    ingest: dict[str, Any] = field(default_factory=dict)
    fit: Any = field(default_factory=lambda: _fit_config({}))  # cst_neuro.train.FitConfig
    upsample: int = 4
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    device: str = "auto"
    torch_threads: int | None = None  # per task; None: CPUs / workers (local), else 1
    gpu: bool = False  # fit, reconstruct and evaluate ask Dask for the worker resource GPU=1
    hash: str = "content"  # how inputs are fingerprinted: file contents, or sizes and mtimes

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> BatchSettings:
        """Read a batch TOML file (see the module docstring)."""
        return cls.from_dict(read_toml(path), source=Path(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: Any = None) -> BatchSettings:
        """Settings from a parsed TOML document (sections as nested dicts)."""
        _only(raw, ("ingest", "fit", "reconstruct", "evaluate", "batch"), source, "section")
        ingest = dict(_section(raw, "ingest", source))
        _only(ingest, INGEST_OPTIONS, source, "[ingest] setting")
        if ingest.get("baseline", "maximin") not in BASELINES:
            raise InputError(source, f"[ingest] baseline must be one of {', '.join(BASELINES)}")
        reconstruct = _section(raw, "reconstruct", source)
        _only(reconstruct, ("upsample",), source, "[reconstruct] setting")
        evaluate = dict(_section(raw, "evaluate", source))
        _only(evaluate, [f.name for f in dataclasses.fields(EvaluateSettings)], source,
              "[evaluate] setting")  # fmt: skip
        if evaluate.get("methods") is not None:
            evaluate["methods"] = tuple(evaluate["methods"])
        batch = _section(raw, "batch", source)
        _only(batch, ("device", "torch_threads", "gpu", "hash"), source, "[batch] setting")
        settings = cls(
            ingest=ingest,
            fit=_fit_config(_section(raw, "fit", source), source),
            upsample=reconstruct.get("upsample", 4),
            evaluate=EvaluateSettings(**evaluate),
            **batch,
        )
        settings.check(source)
        return settings

    def check(self, source: Any = None) -> None:
        """Raise InputError for values no step could use."""
        if not _is_int(self.upsample) or self.upsample < 1:
            raise InputError(source, f"[reconstruct] upsample must be an integer >= 1, "
                                     f"got {self.upsample!r}")  # fmt: skip
        if self.device not in DEVICES:
            raise InputError(source, f"[batch] device must be one of {', '.join(DEVICES)}")
        if self.hash not in HASH_MODES:
            raise InputError(source, f"[batch] hash must be one of {', '.join(HASH_MODES)}")
        if self.torch_threads is not None and (
            not _is_int(self.torch_threads) or self.torch_threads < 1
        ):
            raise InputError(source, "[batch] torch_threads must be an integer >= 1")
        if not isinstance(self.gpu, bool):
            raise InputError(source, f"[batch] gpu must be true or false, got {self.gpu!r}")
        ev = self.evaluate
        if not _is_int(ev.seeds) or ev.seeds < 1:
            raise InputError(source, f"[evaluate] seeds must be an integer >= 1, not {ev.seeds!r}")
        try:
            from cst_neuro.evaluate import Task

            Task(ev.task, factor=ev.factor, fraction=ev.fraction, block=ev.block,
                 horizon=ev.horizon)  # fmt: skip
        except (InputError, TypeError) as e:
            raise InputError(source, f"[evaluate] {e}") from None
        if ev.fit is not None:
            _fit_config(dict(ev.fit), f"{source or 'settings'} [evaluate.fit]")

    def for_step(self, step: str) -> dict[str, Any]:
        """The settings a step's output depends on (part of its input hash)."""
        return {
            "ingest": lambda: {k: self.ingest[k] for k in sorted(self.ingest)},
            "fit": lambda: dataclasses.asdict(self.fit),
            "reconstruct": lambda: {"upsample": self.upsample},
            "evaluate": lambda: dataclasses.asdict(self.evaluate),
        }[step]()


def _fit_config(raw: dict[str, Any], source: Any = None) -> Any:
    """A FitConfig (imported here: loading torch waits until a step needs it)."""
    from cst_neuro.train import FitConfig

    return FitConfig.from_dict(raw, source=source)


def _section(raw: dict[str, Any], name: str, source: Any) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise InputError(source, f"[{name}] must be a table of settings")
    return value


def _only(raw: dict[str, Any], allowed: Any, source: Any, what: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise InputError(
            source, f"unknown {what}(s) {', '.join(unknown)}; expected {', '.join(allowed)}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
