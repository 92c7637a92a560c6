"""``FitConfig``: every setting of a fit, checked once, with the file it came from in errors.

Top-level fields are training settings; ``model`` holds overrides of the mode's network
config (`cst_neuro.model.modes`), whose other fields are sized to the data by the mode.
A checkpoint stores a FitConfig as a plain dict and reads it back with `from_dict`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from cst_neuro.errors import InputError
from cst_neuro.tomlfile import read_toml
from cst_neuro.validation import (
    Integer,
    NonNegativeInt,
    NonNegativeReal,
    PositiveInt,
    PositiveReal,
    Real,
    check_fields,
    validate_table,
)

MEMORY_BUDGET = 2 << 30  # bytes of a modelled variable held in memory; larger ones stream


@dataclass
class FitConfig:
    """Training settings; ``model`` holds network overrides (sizes adapt to the data).

    Every field is checked when a FitConfig is built (`validation`), and ``model`` against
    the mode's network settings.
    """

    mode: str = "cst"
    var: str | None = None  # dff for traces, grid for grids (auto)
    window: Annotated[Integer, Field(ge=2)] = 32  # frames per window: the unit of work
    patch: PositiveInt = 4  # p for p×p grid patches
    max_tokens: PositiveInt = 8192  # observed tokens per window; more channels are subsampled
    batch_size: PositiveInt = 4
    query_fraction: Annotated[Real, Field(gt=0, le=1)] = 0.25  # share of frames held out
    prior: str | None = None  # "default", "none" or a prior's path; None: the mode's default
    lr: PositiveReal | None = None  # None: 1e-3 from scratch, 3e-4 when fine-tuning a prior
    weight_decay: NonNegativeReal = 1e-2
    max_epochs: NonNegativeInt = 200
    steps_per_epoch: PositiveInt = 50
    patience: PositiveInt = 10  # epochs without validation improvement before stopping
    max_minutes: NonNegativeReal = 10.0  # wall-clock budget; the epoch under way ends at it
    val_fraction: Annotated[Real, Field(ge=0, le=0.9)] = 0.1
    # frames per validation block (and longest run of training queries); None: 1 when
    # fine-tuning a prior (single held-out frames are the nearest a recording gets to the
    # sub-frame queries the prior was made for), 4 from scratch
    val_block: PositiveInt | None = None
    # tokens of validation windows scored per pass, at most (evenly spaced windows are kept):
    # a long, wide recording's validation then costs seconds per epoch, not minutes
    val_tokens: PositiveInt = 1 << 20
    seed: NonNegativeInt = 0
    sobolev_k: NonNegativeInt = 2
    sobolev_p: Annotated[Real, Field(ge=1)] = 2.0
    sobolev_weight: NonNegativeReal = 1e-2
    n_collocation: PositiveInt = 256
    memory_budget: NonNegativeInt = MEMORY_BUDGET  # bytes of the variable held in RAM
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        _check_mode(self, None)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> FitConfig:
        """Read a TOML file: top-level keys are FitConfig fields, ``[model]`` network ones."""
        return cls.from_dict({**read_toml(path), **overrides}, source=Path(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: Any = None) -> FitConfig:
        """A checked FitConfig; InputError naming ``source`` for anything unknown or bad."""
        values = validate_table(cls, raw, source=source)
        try:
            return cls(**values)
        except InputError as e:  # the mode's checks, made by __post_init__ without a source
            raise InputError(source, e.problem) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> FitConfig:
        """This config with every "depends" setting decided: the prior (``default`` for a
        mode that uses one), then the learning rate and validation blocks that go with it."""
        from cst_neuro.model.modes import get_mode

        prior = self.prior
        if prior is None:
            prior = "default" if get_mode(self.mode).uses_prior else "none"
        fine_tuning = prior != "none"
        return dataclasses.replace(
            self,
            prior=prior,
            lr=self.lr if self.lr is not None else (3e-4 if fine_tuning else 1e-3),
            val_block=self.val_block if self.val_block is not None else (1 if fine_tuning else 4),
        )

    def sobolev(self, step: float = 1.0) -> Any:
        """The Sobolev loss settings; derivatives measured per ``step`` time units (a frame)."""
        from cst_neuro.model.sobolev import SobolevConfig

        return SobolevConfig(
            k=self.sobolev_k,
            p=self.sobolev_p,
            weights=self.sobolev_weight,
            step=step,
            n_collocation=self.n_collocation,
        )


def _check_mode(config: FitConfig, source: Any) -> None:
    """InputError naming ``source`` for an unknown mode, prior or network setting."""
    from cst_neuro.model.modes import config_fields, get_mode

    try:
        mode = get_mode(config.mode)
    except ValueError as e:
        raise InputError(source, str(e)) from None
    unknown = sorted(set(config.model) - config_fields(mode.name))
    if unknown:
        raise InputError(source, f"unknown [model] setting(s) {', '.join(unknown)}")
    if config.prior is not None:
        if not config.prior:
            raise InputError(source, "setting prior = '' is not default, none or a path")
        if config.prior != "none" and not mode.uses_prior:
            raise InputError(source, f"mode {config.mode} trains from scratch: prior must be none")
    try:  # the data decides n_ids later; one stands in for it here
        mode.make_config({"n_ids": 1, **config.model})
    except (TypeError, ValueError) as e:
        raise InputError(source, f"[model]: {e}") from e
