"""``FitConfig``: every setting of a fit, checked once, with the file it came from in errors.

Top-level fields are training settings; ``model`` holds overrides of the mode's network
config (`cst_neuro.model.modes`), whose other fields are sized to the data by the mode.
A checkpoint stores a FitConfig as a plain dict and reads it back with `from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_neuro.errors import InputError
from cst_neuro.tomlfile import read_toml

MEMORY_BUDGET = 2 << 30  # bytes of a modelled variable held in memory; larger ones stream


@dataclass
class FitConfig:
    """Training settings; ``model`` holds network overrides (sizes adapt to the data)."""

    mode: str = "cst"
    var: str | None = None  # dff for traces, grid for grids (auto)
    window: int = 32  # frames per window: the unit of training and inference
    patch: int = 4  # p for p×p grid patches
    max_tokens: int = 8192  # observed tokens per window; more channels are subsampled
    batch_size: int = 4
    query_fraction: float = 0.25  # share of a window's frames held out as training queries
    prior: str | None = None  # "default", "none" or a prior's path; None: the mode's default
    lr: float | None = None  # None: 1e-3 from scratch, 3e-4 when fine-tuning a prior
    weight_decay: float = 1e-2
    max_epochs: int = 200
    steps_per_epoch: int = 50
    patience: int = 10  # epochs without validation improvement before stopping
    max_minutes: float = 10.0  # wall-clock budget; the epoch under way ends at it
    val_fraction: float = 0.1
    val_block: int = 4  # frames per validation block
    seed: int = 0
    sobolev_k: int = 2
    sobolev_p: float = 2.0
    sobolev_weight: float = 1e-2
    n_collocation: int = 256
    memory_budget: int = MEMORY_BUDGET  # bytes of the modelled variable held in RAM; more streams
    model: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> FitConfig:
        """Read a TOML file: top-level keys are FitConfig fields, ``[model]`` network ones."""
        return cls.from_dict({**read_toml(path), **overrides}, source=Path(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: Any = None) -> FitConfig:
        """A checked FitConfig; InputError naming ``source`` for anything unknown or bad."""
        from cst_neuro.model.modes import config_fields, get_mode

        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise InputError(source, f"unknown setting(s) {', '.join(unknown)}")
        if not isinstance(raw.get("model", {}), dict):
            raise InputError(source, "[model] must be a table of network settings")
        try:
            mode = get_mode(raw.get("mode", "cst"))
        except ValueError as e:
            raise InputError(source, str(e)) from None
        bad_model = sorted(set(raw.get("model", {})) - config_fields(mode.name))
        if bad_model:
            raise InputError(source, f"unknown [model] setting(s) {', '.join(bad_model)}")
        config = cls(**raw)
        _check_settings(config, source)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_prior(self) -> str:
        """``default``, ``none`` or a path: what this fit starts from."""
        from cst_neuro.model.modes import get_mode

        if self.prior is not None:
            return self.prior
        return "default" if get_mode(self.mode).uses_prior else "none"

    def learning_rate(self, fine_tuning: bool) -> float:
        return self.lr if self.lr is not None else (3e-4 if fine_tuning else 1e-3)

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


# setting: (kind, lowest, highest allowed), both inclusive; None = unbounded
_LIMITS: dict[str, tuple[type, float | None, float | None]] = {
    "window": (int, 2, None),
    "patch": (int, 1, None),
    "max_tokens": (int, 1, None),
    "batch_size": (int, 1, None),
    "max_epochs": (int, 0, None),
    "steps_per_epoch": (int, 1, None),
    "patience": (int, 1, None),
    "val_block": (int, 1, None),
    "seed": (int, 0, None),
    "sobolev_k": (int, 0, None),
    "n_collocation": (int, 1, None),
    "memory_budget": (int, 0, None),
    "query_fraction": (float, 1e-6, 1.0),
    "weight_decay": (float, 0.0, None),
    "max_minutes": (float, 0.0, None),
    "val_fraction": (float, 0.0, 0.9),
    "sobolev_p": (float, 1.0, None),
    "sobolev_weight": (float, 0.0, None),
}


def _check_settings(config: FitConfig, source: Any) -> None:
    """InputError naming ``source`` for a setting of the wrong type or out of range."""
    from cst_neuro.model.modes import get_mode

    for name, (kind, low, high) in _LIMITS.items():
        value = getattr(config, name)
        ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            raise InputError(source, f"setting {name} = {value!r} is not a {kind.__name__}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise InputError(source, f"setting {name} = {value!r} must be {bounds}")
    if config.var is not None and not isinstance(config.var, str):
        raise InputError(source, f"setting var = {config.var!r} is not a variable name")
    lr = config.lr
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, int | float) or not 1e-12 <= lr < math.inf
    ):
        raise InputError(source, f"setting lr = {lr!r} must be a positive number")
    if config.prior is not None:
        if not isinstance(config.prior, str) or not config.prior:
            raise InputError(
                source, f"setting prior = {config.prior!r} is not default, none or a path"
            )
        if config.prior != "none" and not get_mode(config.mode).uses_prior:
            raise InputError(source, f"mode {config.mode} trains from scratch: prior must be none")
    try:  # the data decides n_ids later; one stands in for it here
        get_mode(config.mode).make_config({"n_ids": 1, **config.model})
    except (TypeError, ValueError) as e:
        raise InputError(source, f"[model]: {e}") from e
