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
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SkipValidation

from cst_neuro.errors import InputError
from cst_neuro.ingest import IngestSettings
from cst_neuro.tomlfile import read_toml
from cst_neuro.validation import (
    Integer,
    Names,
    NonNegativeReal,
    PositiveInt,
    Real,
    check_fields,
    validate_table,
)

BATCH_OPTIONS = ("device", "torch_threads", "gpu", "hash")


def _known_methods(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    from cst_neuro.evaluate.methods import METHODS

    unknown = [n for n in names or () if n not in METHODS]
    if unknown:
        raise ValueError(f"names unknown method(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(METHODS)}")  # fmt: skip
    return names


def _known_task(name: str) -> str:
    from cst_neuro.evaluate.tasks import TASKS

    if name not in TASKS:
        raise ValueError(f"must be one of {', '.join(TASKS)}")
    return name


@dataclass(frozen=True)
class EvaluateSettings:
    """Arguments of ``cst_neuro.evaluate.evaluate_store`` for the evaluate step."""

    task: Annotated[str, AfterValidator(_known_task)] = "upsample"
    factor: Annotated[Integer, Field(ge=2)] = 4
    # None: the evaluation's default methods
    methods: Annotated[Names | None, AfterValidator(_known_methods)] = None
    seeds: PositiveInt = 1
    max_minutes: NonNegativeReal | None = None  # the evaluation's whole budget (default if None)
    fraction: Annotated[Real, Field(gt=0.0, lt=1.0)] = 0.2  # in-filling: share hidden
    block: PositiveInt = 1  # in-filling: frames per hidden run
    horizon: PositiveInt = 4  # forecasting: frames ahead
    fit: dict[str, Any] | None = None  # [evaluate.fit]: FitConfig overrides for the model fits

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class BatchSettings:
    """Everything a batch run needs besides its inputs; the same settings give the same keys."""

    ingest: dict[str, Any] = field(default_factory=dict)  # IngestSettings given in [ingest]
    fit: Annotated[Any, SkipValidation] = field(default_factory=lambda: _fit_config({}))
    upsample: PositiveInt = 4
    evaluate: Annotated[EvaluateSettings, SkipValidation] = field(default_factory=EvaluateSettings)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: PositiveInt | None = None  # per task; None: CPUs / workers (local), else 1
    gpu: bool = False  # fit, reconstruct and evaluate ask Dask for the worker resource GPU=1
    hash: Literal["content", "stat"] = "content"  # fingerprint inputs by contents or stat

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> BatchSettings:
        """Read a batch TOML file (see the module docstring)."""
        return cls.from_dict(read_toml(path), source=Path(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: Any = None) -> BatchSettings:
        """Settings from a parsed TOML document (sections as nested dicts)."""
        tables = validate_table(_Tables, raw, source=source, kind="section")
        given = validate_table(IngestSettings, tables["ingest"], source=source, section="[ingest] ")
        ingest = {k: given[k] for k in tables["ingest"]}  # only what the file sets
        reconstruct = validate_table(
            cls, tables["reconstruct"], only=("upsample",), source=source, section="[reconstruct] "
        )
        batch = validate_table(
            cls, tables["batch"], only=BATCH_OPTIONS, source=source, section="[batch] "
        )
        evaluate = validate_table(
            EvaluateSettings, tables["evaluate"], source=source, section="[evaluate] "
        )
        try:
            from cst_neuro.evaluate import Task

            Task(evaluate["task"], factor=evaluate["factor"], fraction=evaluate["fraction"],
                 block=evaluate["block"], horizon=evaluate["horizon"])  # fmt: skip
        except InputError as e:
            raise InputError(source, f"[evaluate] {e}") from None
        if evaluate["fit"] is not None:
            _fit_config(dict(evaluate["fit"]), f"{source or 'settings'} [evaluate.fit]")
        return cls(
            ingest=ingest,
            fit=_fit_config(tables["fit"], source),
            evaluate=EvaluateSettings(**evaluate),
            **reconstruct,
            **batch,
        )

    def for_step(self, step: str) -> dict[str, Any]:
        """The settings a step's output depends on (part of its input hash)."""
        return {
            "ingest": lambda: {k: self.ingest[k] for k in sorted(self.ingest)},
            "fit": lambda: dataclasses.asdict(self.fit),
            "reconstruct": lambda: {"upsample": self.upsample},
            "evaluate": lambda: dataclasses.asdict(self.evaluate),
        }[step]()


@dataclass(frozen=True)
class _Tables:
    """The sections of a batch file (each a table of settings)."""

    ingest: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    reconstruct: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)


def _fit_config(raw: dict[str, Any], source: Any = None) -> Any:
    """A FitConfig (imported here: loading torch waits until a step needs it)."""
    from cst_neuro.train import FitConfig

    return FitConfig.from_dict(raw, source=source)
