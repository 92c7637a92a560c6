"""Evaluation tasks: which samples every method sees, and which it is scored on.

A task turns a recording of T frames × C ROIs into masks. Time is first cut into
contiguous segments (``N_SEGMENTS``); whole segments go to validation and test, the rest
to training, so no held-out sample sits next to a training sample of the same task
except across a segment border. Then, per task:

- ``upsample`` (factor k): only every k-th frame is observed; the frames in between are
  hidden. Scored: hidden frames in test segments that lie between two observed frames.
- ``infill`` (``fraction`` 0.2 or 0.5): a random share of frames is hidden; with
  ``block`` > 1, hidden frames come in runs of ``block`` frames (missing blocks).
- ``spatial``: 10% of the ROIs are hidden in the validation and test segments (they are
  seen in training segments only), to be predicted from the other ROIs at their positions.
- ``forecast`` (horizon h): forecasts start at origins inside test segments; everything up
  to the origin is context, the next h frames are scored (see ``forecast_origins``).

Models train on the observed samples of the training segments only; hidden samples of
validation segments serve for choosing hyperparameters (never the test ones).

``TASK_KINDS`` is the registry: each task's family of methods, label and hiding rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cst_neuro.errors import InputError

N_SEGMENTS = 10
TEST_SEGMENTS = 2
VAL_SEGMENTS = 1

Hidden = tuple[np.ndarray, np.ndarray, int]  # observed frames (T,), observed ROIs (C,), stride


@dataclass(frozen=True)
class TaskKind:
    """One entry of the task registry: what its methods do and which samples it hides.

    ``family`` names the methods that apply (``cst_neuro.evaluate.methods``):
    ``interpolate``, ``spatial`` or ``forecast``. ``hide(task, n_frames, n_rois, rng)``
    gives the observed frames and ROIs and the stride (None for forecasting, which has
    origins instead: ``forecast_origins``). ``dense`` tasks also score the smoothness of
    dense reconstructions.
    """

    name: str
    family: str
    label: Callable[[Task], str]
    hide: Callable[[Task, int, int, np.random.Generator], Hidden] | None
    dense: bool = False


@dataclass(frozen=True)
class Task:
    """A task's settings: ``factor`` (upsample), ``fraction``/``block`` (infill), ``horizon``."""

    name: str
    factor: int = 4
    fraction: float = 0.2
    block: int = 1
    horizon: int = 4
    spatial_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in TASK_KINDS:
            raise InputError(None, f"task must be one of {', '.join(TASKS)}, got {self.name!r}")
        if self.factor < 2:
            raise InputError(None, f"upsampling factor must be 2 or more, got {self.factor}")
        if not 0 < self.fraction < 1:
            raise InputError(None, f"in-filling fraction must be in (0, 1), got {self.fraction}")
        if self.block < 1 or self.horizon < 1:
            raise InputError(None, "block and horizon must be 1 or more")

    def check(self, n_frames: int, source: Any = None) -> None:
        """InputError naming ``source`` when ``n_frames`` frames cannot hold this task.

        Checked before any work: an upsampling factor that leaves a tenth of the recording
        (a segment) fewer than two observed frames has nothing to interpolate between.
        """
        if n_frames < 2 * N_SEGMENTS:
            raise InputError(source, f"a recording of {n_frames} frames is too short to evaluate")
        per_segment = n_frames // N_SEGMENTS
        if self.name == "upsample" and 2 * self.factor > per_segment:
            raise InputError(
                source, f"upsampling factor {self.factor} is too large for {n_frames} frames: "
                f"each tenth ({per_segment} frames) needs two observed frames, so the factor "
                f"can be at most {per_segment // 2}"
            )  # fmt: skip

    @property
    def kind(self) -> TaskKind:
        """This task's registry entry."""
        return TASK_KINDS[self.name]

    @property
    def label(self) -> str:
        """Short name for tables: ``upsample x4``, ``infill 20% (blocks of 8)``..."""
        return self.kind.label(self)


@dataclass(frozen=True)
class Split:
    """Masks of one task on one recording (T frames, C ROIs) for one seed.

    ``observed`` (T, C): what methods may read at test time (inputs). ``segment`` (T,):
    0 train, 1 validation, 2 test. ``val_targets`` / ``test_targets`` (T, C): hidden
    samples scored for hyperparameter choice / for the report. ``stride``: k when the
    observed frames are every k-th frame (upsampling), else 1.
    """

    observed: np.ndarray
    segment: np.ndarray
    val_targets: np.ndarray
    test_targets: np.ndarray
    stride: int = 1

    @property
    def train_frames(self) -> np.ndarray:
        return self.segment == 0

    @property
    def test_frames(self) -> np.ndarray:
        return self.segment == 2

    @property
    def train_observed(self) -> np.ndarray:
        """(T, C) samples a model may train on: observed, in training segments."""
        return self.observed & self.train_frames[:, None]


def segments(n_frames: int, seed: int) -> np.ndarray:
    """(T,) segment role per frame: contiguous tenths, two for test and one for validation.

    The first and last tenths always train (interpolation needs context on both sides of
    every held-out segment); the roles of the others are drawn with ``seed``.
    """
    if n_frames < 2 * N_SEGMENTS:
        raise InputError(None, f"a recording of {n_frames} frames is too short to evaluate")
    order = np.random.default_rng(seed).permutation(np.arange(1, N_SEGMENTS - 1))
    role = np.zeros(N_SEGMENTS, np.int8)
    role[order[:TEST_SEGMENTS]] = 2
    role[order[TEST_SEGMENTS : TEST_SEGMENTS + VAL_SEGMENTS]] = 1
    edges = np.linspace(0, n_frames, N_SEGMENTS + 1).round().astype(int)
    return np.repeat(role, np.diff(edges))


def make_split(task: Task, n_frames: int, n_rois: int, seed: int) -> Split:
    """The masks of ``task`` (not ``forecast``, see ``forecast_origins``) for one seed."""
    seg = segments(n_frames, seed)
    rng = np.random.default_rng([seed, 4])
    if task.kind.hide is None:
        raise InputError(None, "forecasting has origins, not a mask: use forecast_origins")
    frames, rois, stride = task.kind.hide(task, n_frames, n_rois, rng)
    observed = frames[:, None] & rois[None, :]
    if task.kind.family == "spatial":  # hidden ROIs are seen in training segments
        observed |= (seg == 0)[:, None]
    hidden = ~observed & _between_observed(frames)[:, None]
    return Split(
        observed=observed,
        segment=seg,
        val_targets=hidden & (seg == 1)[:, None],
        test_targets=hidden & (seg == 2)[:, None],
        stride=stride,
    )


def _every_kth_frame(task: Task, n_frames: int, n_rois: int, rng: np.random.Generator) -> Hidden:
    """Upsampling: every ``factor``-th frame observed."""
    return np.arange(n_frames) % task.factor == 0, np.ones(n_rois, bool), task.factor


def _random_frames(task: Task, n_frames: int, n_rois: int, rng: np.random.Generator) -> Hidden:
    """In-filling: a ``fraction`` of frames hidden, in runs of ``block``."""
    return ~_hidden_runs(n_frames, task.fraction, task.block, rng), np.ones(n_rois, bool), 1


def _random_rois(task: Task, n_frames: int, n_rois: int, rng: np.random.Generator) -> Hidden:
    """Spatial: a ``spatial_fraction`` of ROIs hidden (outside training segments)."""
    if n_rois < 2:
        raise InputError(None, "the spatial task needs at least two ROIs")
    rois = np.ones(n_rois, bool)
    n_hidden = max(1, round(task.spatial_fraction * n_rois))
    rois[rng.choice(n_rois, n_hidden, replace=False)] = False
    return np.ones(n_frames, bool), rois, 1


def _hidden_runs(
    n_frames: int, fraction: float, block: int, rng: np.random.Generator
) -> np.ndarray:
    """(T,) hidden frames: runs of ``block`` frames at random until ``fraction`` is hidden."""
    n_blocks = -(-n_frames // block)
    chosen = rng.permutation(n_blocks)[: round(fraction * n_blocks)]
    return np.isin(np.arange(n_frames) // block, chosen)


def _between_observed(frames: np.ndarray) -> np.ndarray:
    """(T,) True from the first to the last observed frame (interpolation, not extrapolation)."""
    idx = np.flatnonzero(frames)
    out = np.zeros(frames.size, bool)
    if idx.size:
        out[idx[0] : idx[-1] + 1] = True
    return out


def forecast_origins(seg: np.ndarray, horizon: int, context: int, max_origins: int) -> np.ndarray:
    """Origins o (last context frame) with ``context`` frames before and o+1..o+h all in test.

    The context may reach back into other segments (it is input, not a target); the scored
    frames lie inside one test segment. At most ``max_origins``, evenly spaced.
    """
    n = seg.size
    ok = [o for o in range(context - 1, n - horizon) if np.all(seg[o + 1 : o + 1 + horizon] == 2)]
    if not ok:
        raise InputError(None, "no forecast origin fits: recording too short for the horizon")
    pick = np.linspace(0, len(ok) - 1, min(max_origins, len(ok))).round().astype(int)
    return np.asarray(ok)[np.unique(pick)]


def _infill_label(task: Task) -> str:
    blocks = f" (blocks of {task.block})" if task.block > 1 else ""
    return f"infill {round(100 * task.fraction)}%{blocks}"


TASK_KINDS: dict[str, TaskKind] = {
    kind.name: kind
    for kind in (
        TaskKind("upsample", "interpolate", lambda t: f"upsample x{t.factor}", _every_kth_frame,
                 dense=True),
        TaskKind("infill", "interpolate", _infill_label, _random_frames),
        TaskKind("spatial", "spatial", lambda t: f"spatial {round(100 * t.spatial_fraction)}% ROIs",
                 _random_rois),
        TaskKind("forecast", "forecast", lambda t: f"forecast h={t.horizon}", None),
    )
}  # fmt: skip
TASKS = tuple(TASK_KINDS)
