"""Simulation settings: calcium indicators (approximate presets) and ``SimulationConfig``.

Indicator kernels are differences of exponentials with a unit peak,
``h(t) = (exp(-t/tau_decay) - exp(-t/tau_rise)) / h_peak`` for ``t > 0``, scaled by the
peak ΔF/F of one spike. The presets are round values meant to sit in the range of
single-spike responses reported for mouse cortex in vivo (GCaMP6f/s: Chen et al. 2013,
Nature 499:295; jGCaMP8f: Zhang et al. 2023, Nature 615:884; OGB-1: Kerr et al. 2005,
PNAS 102:14063). GCaMP6f and jGCaMP8f were checked against a least-squares fit of this
kernel to the CASCADE ground truth in ``shared/data/ground_truth`` (GCaMP6f: rise
50-80 ms, decay 0.2-0.3 s, 6-14 % per spike; jGCaMP8f: rise under 8 ms, decay 0.15-0.7 s,
20-30 % per spike); GCaMP6s and OGB-1 were not. They make realistic-looking data, not
measurements: pass your own ``Indicator`` where the numbers matter.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SkipValidation

from cst_neuro.errors import InputError
from cst_neuro.validation import (
    Integer,
    NonNegativeInt,
    NonNegativeReal,
    PositiveInt,
    PositiveReal,
    check_fields,
)

Side = Annotated[Integer, Field(ge=16)]  # pixels: smaller fields of view hold no cells
Fov = Annotated[
    tuple[Side, Side], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)
]
UpTo200 = Annotated[PositiveReal, Field(le=200.0)]  # beyond: absurd numbers of candidate spikes
UpTo5 = Annotated[NonNegativeReal, Field(le=5.0)]
Fraction = Annotated[NonNegativeReal, Field(le=1.0)]


@dataclass(frozen=True)
class Indicator:
    """A calcium indicator's response to one spike (times in seconds, amplitude in ΔF/F)."""

    name: str
    tau_rise: PositiveReal
    tau_decay: PositiveReal
    amplitude: PositiveReal  # peak ΔF/F of one isolated spike
    saturation: PositiveReal | None = None  # ΔF/F ceiling: x / (1 + x / saturation); None: linear

    def __post_init__(self) -> None:
        check_fields(self, section=f"Indicator {self.name!r}: ")
        if self.tau_rise >= self.tau_decay:
            raise InputError(
                None,
                f"Indicator {self.name!r}: tau_rise ({self.tau_rise} s) must be shorter than "
                f"tau_decay ({self.tau_decay} s)",
            )

    @property
    def peak_time(self) -> float:
        """Seconds from a spike to the kernel's peak."""
        r, d = self.tau_rise, self.tau_decay
        return r * d / (d - r) * math.log(d / r)

    @property
    def peak(self) -> float:
        """Maximum of ``exp(-t/tau_decay) - exp(-t/tau_rise)`` (the normaliser ``h_peak``)."""
        t = self.peak_time
        return math.exp(-t / self.tau_decay) - math.exp(-t / self.tau_rise)


INDICATORS: dict[str, Indicator] = {
    ind.name.lower(): ind
    for ind in (
        Indicator("GCaMP6f", tau_rise=0.05, tau_decay=0.3, amplitude=0.15),
        Indicator("GCaMP6s", tau_rise=0.1, tau_decay=1.3, amplitude=0.25),
        Indicator("jGCaMP8f", tau_rise=0.005, tau_decay=0.25, amplitude=0.3),
        Indicator("OGB-1", tau_rise=0.01, tau_decay=0.7, amplitude=0.08),
    )
}


def get_indicator(indicator: str | Indicator) -> Indicator:
    """An ``Indicator`` itself, or the preset of that name (case-insensitive)."""
    if isinstance(indicator, Indicator):
        return indicator
    try:
        return INDICATORS[str(indicator).lower()]
    except KeyError:
        names = ", ".join(ind.name for ind in INDICATORS.values())
        raise InputError(
            None, f"unknown indicator {indicator!r}; choose from {names} or pass an Indicator"
        ) from None


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated recording; the same config gives the same data.

    Fluorescence is in arbitrary units (a.u.) on the scale of a two-photon camera's counts.
    Random draws are keyed by ``seed`` and by chunks of ``chunk_frames`` frames, so a longer
    recording with the same config starts with the same frames.
    """

    n_rois: PositiveInt = 200
    n_frames: PositiveInt = 3000
    fs: PositiveReal = (
        30.0  # volume rate (Hz); plane p is sampled p / (fs * n_planes) s after plane 0
    )
    n_planes: PositiveInt = 1
    fov: Fov = (256, 256)  # (Ly, Lx) pixels per plane
    seed: NonNegativeInt = 0
    indicator: Annotated[str | Indicator, SkipValidation] = "GCaMP6f"  # see get_indicator
    # firing: rate_r(t) = nu_r * exp(u_r(t)) / E[exp(u_r)], nu_r lognormal with mean rate_hz
    rate_hz: UpTo200 = 1.0
    rate_spread: Annotated[NonNegativeReal, Field(le=2.0)] = 0.5  # sigma of log nu_r
    n_waves: NonNegativeInt = 2  # travelling plane waves across the field of view
    n_oscillators: NonNegativeInt = 3  # shared oscillators (incommensurate), mixed by position
    wave_amplitude: UpTo5 = 0.5  # log-rate modulation of each wave
    oscillator_amplitude: UpTo5 = 0.4  # log-rate modulation of each oscillator at its centre
    drift_amplitude: UpTo5 = 0.1  # a slow (minutes) shared log-rate drift
    amplitude_spread: NonNegativeReal = 0.3  # sigma of log per-ROI spike amplitude
    cell_fraction: Fraction = 0.85  # the rest are non-somatic ROIs with weak signal
    # optics and noise
    soma_radius: PositiveReal = 5.0  # pixels
    baseline_f: PositiveReal = 500.0  # mean somatic baseline F0 (a.u.)
    baseline_drift: Annotated[NonNegativeReal, Field(le=0.49)] = 0.03  # slow drift of F0 (< F0/2)
    neuropil_ratio: NonNegativeReal = 0.8  # neuropil baseline / F0
    neuropil_coefficient: NonNegativeReal = 0.7  # true contamination r in F = soma + r * neuropil
    neuropil_sigma: PositiveReal = 25.0  # pixels: spatial blur of population activity in neuropil
    neuropil_activity: NonNegativeReal = 0.5  # gain of blurred population ΔF/F in the neuropil
    shot_noise: NonNegativeReal = 1.0  # shot-noise variance per a.u. of signal
    read_noise: NonNegativeReal = 5.0  # read-noise standard deviation (a.u.)
    neuropil_noise: NonNegativeReal = 0.3  # Fneu noise std relative to F noise at the same level
    chunk_frames: PositiveInt = 1024  # generation unit; changing it changes the realisation

    def __post_init__(self) -> None:
        check_fields(self)  # plain Python numbers after it, so that to_json works with numpy
        get_indicator(self.indicator)
        if self.n_rois < self.n_planes:
            raise InputError(
                None, f"n_rois ({self.n_rois}) must be at least n_planes ({self.n_planes})"
            )
        if 4 * self.soma_radius > min(self.fov):
            raise InputError(
                None, f"soma_radius {self.soma_radius} px is too large for the fov {self.fov}"
            )

    @property
    def kernel(self) -> Indicator:
        """The indicator, resolved from a preset name if needed."""
        return get_indicator(self.indicator)

    @property
    def duration(self) -> float:
        """Seconds covered by the frames: ``n_frames / fs``."""
        return self.n_frames / self.fs

    def replace(self, **changes: Any) -> SimulationConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The config as JSON (stored in the Recording's attrs)."""
        d = dataclasses.asdict(self)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SimulationConfig:
        """Inverse of ``to_json``."""
        d = json.loads(text)
        if isinstance(d.get("indicator"), dict):
            d["indicator"] = Indicator(**d["indicator"])
        d["fov"] = tuple(d["fov"])
        return cls(**d)
