"""The calcium prior: the one shipped with the package, any other, and a fit that starts from it.

A prior is a checkpoint of kind ``prior`` (`cst_neuro.pretrain`): a transferable CST with no
per-ROI parameters, bound to no recording. `fit` binds it to a recording: the recording's
normaliser and channel descriptors, and the per-ROI parts a fit may learn (an identity
embedding and a per-channel gain, both starting at zero, so the prior's predictions are
unchanged until training moves them), then fine-tunes. ``--prior default`` is the file in
``cst_neuro/priors/`` (see docs/prior.md for how it was made), ``none`` trains from scratch.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cst_neuro.checkpoint import Checkpoint, checked_contents
from cst_neuro.errors import InputError
from cst_neuro.model.cst import CST, CSTConfig

DEFAULT = "default"
NONE = "none"
PER_CHANNEL = ("id_embed.weight", "channel_gain.weight", "channel_blend")  # added by a fit
# network settings a fit may change without leaving the prior's architecture
FINE_TUNING = frozenset({"dropout", "attn_dropout", "input_noise", "channel_gain"})


def default_prior_path() -> Path:
    """The prior shipped inside the package."""
    return Path(str(resources.files("cst_neuro") / "priors" / "default.pt"))


def load_prior(spec: str | os.PathLike[str] | None) -> Checkpoint | None:
    """The prior named by ``spec``: ``default``, ``none`` (or None: no prior) or a path."""
    if spec is None or str(spec) == NONE:
        return None
    path = default_prior_path() if str(spec) == DEFAULT else Path(spec)
    prior = Checkpoint.load(path)
    if prior.kind != "prior" or not isinstance(prior.model_config, CSTConfig):
        raise InputError(path, f"is a {prior.kind} checkpoint of mode {prior.mode}, not a prior")
    if prior.model_config.n_ids:
        raise InputError(path, "a prior must not hold per-ROI parameters (n_ids > 0)")
    return prior


def bound_config(prior: Checkpoint, n_channels: int, overrides: dict[str, Any]) -> CSTConfig:
    """The prior's network with per-channel parts for ``n_channels`` and allowed overrides."""
    changed = sorted(set(overrides) - FINE_TUNING)
    if changed:
        raise InputError(
            None,
            f"[model] setting(s) {', '.join(changed)} would change the prior's network; "
            f"fine-tuning may set only {', '.join(sorted(FINE_TUNING))} (or use prior = none)",
        )
    settings = dataclasses.asdict(prior.model_config)
    # no per-channel gain: shrinking a channel's interpolant shrinks its transients too
    settings.update(n_ids=n_channels, channel_gain=False, **overrides)
    return CSTConfig(**settings)


def start_from(prior: Checkpoint, model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load the prior's weights into a bound ``model``; its per-channel parts start at zero."""
    with checked_contents(path):
        missing, unexpected = model.load_state_dict(prior.state_dict, strict=False)
        if unexpected or set(missing) - set(PER_CHANNEL):
            raise ValueError(
                f"weights do not fit the network (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]})"
            )
    if isinstance(model, CST) and model.id_embed is not None:
        with torch.no_grad():
            model.id_embed.weight.zero_()


def prior_name(spec: str | os.PathLike[str] | None) -> str:
    """How a checkpoint records the prior it started from."""
    if spec is None or str(spec) in (DEFAULT, NONE):
        return str(spec or NONE)
    return Path(spec).name
