"""The pretraining corpus: recordings observed the way users observe them, with the truth between.

A `Source` is a recording at its acquisition rate: a synthetic one (`families`), or a real
one from a store or any file `cst-neuro ingest` reads. `Corpus.batch` draws training
windows from them as a user's recording would present itself to `fit`:

1. the source is decimated by a random factor k (1-8, at a random phase): the model sees
   every k-th frame, at rate fs/k, and random frames of those go missing, alone or in runs;
2. the observed series is normalised per ROI and described (`data.channel_features`) from
   its own samples, as `fit` does from a recording's training frames;
3. a window of W observed frames becomes the context tokens (some ROIs hidden, for spatial
   prediction); the queries are frames in between (sub-frame times at rate fs/k) and the
   missing ones, with the source's value there (``target``: its white noise removed where
   it is known, the recorded value for real recordings) as what to predict.

Everything is seeded by the generator passed in, so a corpus replays exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cst_neuro.data import Tokens, channel_features, pad_tokens
from cst_neuro.errors import InputError
from cst_neuro.pretrain.families import draw_recording

FACTORS = np.array([1, 2, 3, 4, 5, 6, 8])
FACTOR_WEIGHTS = np.array([0.08, 0.2, 0.14, 0.22, 0.1, 0.1, 0.16])


@dataclass(frozen=True)
class Source:
    """A recording at its acquisition rate: (T, C) values and what a model should predict."""

    name: str
    noisy: np.ndarray  # (T, C), NaN where missing
    target: np.ndarray  # (T, C)
    fs: float
    positions: np.ndarray  # (C, 2) in field-of-view units

    @property
    def n_frames(self) -> int:
        return int(self.noisy.shape[0])


def synthetic_source(rng: np.random.Generator, seconds: float, max_rois: int) -> Source:
    """A fresh recording from the synthetic families."""
    rec = draw_recording(rng, seconds, max_rois=max_rois)
    return Source("synthetic", rec.noisy, rec.target, rec.fs, rec.positions)


def real_sources(path: str | os.PathLike[str]) -> list[Source]:
    """A real recording's ROI traces (ΔF/F): a cst-neuro store, anything `cst-neuro ingest`
    reads with its rate, or a CASCADE ground-truth ``.mat`` (one source per cell)."""
    from cst_neuro.evaluate.recording import load_traces
    from cst_neuro.evaluate.spikes import is_ground_truth, load_ground_truth

    path = Path(path)
    if is_ground_truth(path):
        return [_source(path, load_traces(gt.recording)) for gt in load_ground_truth(path)]
    if os.path.isdir(path) and (
        str(path).endswith(".zarr") or os.path.exists(os.path.join(path, "zarr.json"))
    ):
        return [_source(path, load_traces(path))]
    from cst_neuro.io import open_recording
    from cst_neuro.preprocess import compute_dff

    ds = open_recording(path)
    return [_source(path, load_traces(ds if "dff" in ds else compute_dff(ds)))]


def _source(path: Path, traces: Any) -> Source:
    """A Source of `evaluate.recording.Traces` (named as the recording names itself, so
    evaluations can tell corpus recordings apart), positions scaled to the field of view."""
    name = traces.name or path.name
    span = np.ptp(traces.positions, axis=0).max() if traces.shape[1] > 1 else 0.0
    positions = (
        (traces.positions - traces.positions.min(0)) / span if span > 0 else traces.positions * 0
    )
    values = traces.values.astype(np.float32)
    if traces.shape[0] < 64:
        raise InputError(path, f"{traces.shape[0]} frames is too short for the corpus (64 or more)")
    return Source(name, values, values, traces.fs, positions)


@dataclass
class Observed:
    """A source as a user would record it: every k-th frame, some missing, normalised."""

    source: Source
    factor: int  # k
    frames: np.ndarray  # (n,) full-rate index of each observed frame
    values: np.ndarray  # (n, C) normalised, NaN where missing
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)
    features: np.ndarray  # (C, F)


def observe(source: Source, rng: np.random.Generator, window: int) -> Observed | None:
    """Decimate, drop frames, normalise and describe; None if too short for a window."""
    factor = int(rng.choice(FACTORS, p=FACTOR_WEIGHTS / FACTOR_WEIGHTS.sum()))
    while factor > 1 and source.n_frames // factor < window + 1:
        factor -= 1
    frames = np.arange(int(rng.integers(factor)), source.n_frames, factor)
    if frames.size < window + 1:
        return None
    values = source.noisy[frames].astype(np.float64)
    if rng.random() < 0.5:  # missing frames, alone or in runs
        share = rng.uniform(0.0, 0.25)
        run = int(rng.choice([1, 1, 2, 4, 8]))
        starts = rng.random(frames.size) < share / run
        gone = np.convolve(starts, np.ones(run), "full")[: frames.size] > 0
        values[gone] = np.nan
    finite = np.isfinite(values)
    if finite.sum(0).min() < 4:
        return None
    mean = np.nanmean(values, 0)
    std = np.nanstd(values, 0)
    std = np.where(std > 1e-8, std, 1.0)
    fs = source.fs / factor
    features = channel_features(values[:, :, None], fs, mean=mean[:, None], std=std[:, None])
    return Observed(source, factor, frames, (values - mean) / std, mean, std, features)


def window_tokens(
    obs: Observed,
    rng: np.random.Generator,
    window: int,
    max_channels: int,
    max_queries: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Context and query token arrays of one random window of ``obs`` (None if empty)."""
    source, k = obs.source, obs.factor
    start = int(rng.integers(obs.frames.size - window + 1))
    block = obs.values[start : start + window]  # (W, C)
    channels = np.arange(block.shape[1])
    if channels.size > max_channels:
        channels = np.sort(rng.choice(channels, max_channels, replace=False))
    hidden = np.zeros(channels.size, bool)
    if channels.size >= 4 and rng.random() < 0.2:  # spatial prediction of unseen ROIs
        hidden[rng.choice(channels.size, max(1, channels.size // 10), replace=False)] = True
    seen = np.isfinite(block[:, channels]) & ~hidden
    if seen.sum() < 2:
        return None
    frame, col = np.nonzero(seen)
    context = _tokens(obs, frame.astype(np.float64), channels[col], block[frame, channels[col]])
    first, last = obs.frames[start], obs.frames[start + window - 1]
    full = np.arange(first, last + 1)  # full-rate frames the window spans
    at_observed = np.zeros(full.size, bool)
    at_observed[obs.frames[start : start + window] - first] = True
    observed_here = np.isfinite(block[:, channels])  # (W, C')
    wanted = np.ones((full.size, channels.size), bool)
    rows = (obs.frames[start : start + window] - first)[:, None]
    wanted[rows, np.arange(channels.size)] = ~observed_here | hidden  # observed: not a query
    target = source.target[full][:, channels]
    wanted &= np.isfinite(target)
    q_frame, q_col = np.nonzero(wanted)
    if q_frame.size == 0:
        return None
    if q_frame.size > max_queries:
        keep = rng.choice(q_frame.size, max_queries, replace=False)
        q_frame, q_col = q_frame[keep], q_col[keep]
    c = channels[q_col]
    values = (target[q_frame, q_col] - obs.mean[c]) / obs.std[c]
    query = _tokens(obs, q_frame / k, c, values)
    return context, query


def _tokens(
    obs: Observed, frame: np.ndarray, channel: np.ndarray, values: np.ndarray
) -> dict[str, np.ndarray]:
    """Token arrays: time in observed frames from the window start, place in the FOV."""
    coords = np.column_stack([frame, obs.source.positions[channel]]).astype(np.float32)
    v = values.astype(np.float32)[:, None]
    return {
        "coords": coords,
        "values": v,
        "ids": channel.astype(np.int64),
        "value_mask": np.ones_like(v, bool),
    }


class Corpus:
    """Training windows from synthetic families and real recordings, seeded.

    ``real_share`` of the windows come from ``real`` sources (when any); a synthetic
    recording serves ``windows_per_recording`` windows before the next is drawn.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        *,
        real: Sequence[Source] = (),
        real_share: float = 0.25,
        window: int = 32,
        max_channels: int = 48,
        max_queries: int = 512,
        seconds: float = 60.0,
        windows_per_recording: int = 4,
    ) -> None:
        self.rng, self.real, self.real_share = rng, list(real), real_share if real else 0.0
        self.window, self.max_channels, self.max_queries = window, max_channels, max_queries
        self.seconds, self.windows_per_recording = seconds, windows_per_recording
        self._current: Observed | None = None
        self._served = 0

    def _synthetic(self) -> Observed:
        if self._current is None or self._served >= self.windows_per_recording:
            self._current, self._served = None, 0
            while self._current is None:
                source = synthetic_source(self.rng, self.seconds, self.max_channels)
                self._current = observe(source, self.rng, self.window)
        self._served += 1
        return self._current

    def _real(self) -> Observed:
        while True:
            source = self.real[int(self.rng.integers(len(self.real)))]
            obs = observe(source, self.rng, self.window)
            if obs is not None:
                return obs

    def batch(self, size: int) -> tuple[Tokens, Tokens]:
        """``size`` windows as padded context and query batches (`data.Tokens`)."""
        contexts: list[dict[str, np.ndarray]] = []
        queries: list[dict[str, np.ndarray]] = []
        tables: list[np.ndarray] = []
        seconds: list[float] = []
        while len(contexts) < size:
            obs = self._real() if self.rng.random() < self.real_share else self._synthetic()
            parts = window_tokens(obs, self.rng, self.window, self.max_channels, self.max_queries)
            if parts is None:
                continue
            contexts.append(parts[0])
            queries.append(parts[1])
            tables.append(obs.features)
            seconds.append(obs.factor / obs.source.fs)
        return (
            pad_tokens(contexts, 1, channels=tables, seconds_per_frame=seconds),
            pad_tokens(queries, 1, channels=tables, seconds_per_frame=seconds),
        )
