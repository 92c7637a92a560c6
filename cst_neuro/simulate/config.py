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
import numbers
from dataclasses import dataclass
from typing import Any

from cst_neuro.errors import InputError


def _fov(fov: Any) -> tuple[int, int]:
    try:
        ly, lx = (int(v) for v in fov)
        ok = ly == fov[0] and lx == fov[1]
    except (TypeError, ValueError):
        ok = False
    if not ok or min(ly, lx) < 16:
        raise InputError(None, f"fov must be two integers (Ly, Lx) of at least 16, got {fov!r}")
    return ly, lx


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise InputError(None, f"{name} must be a positive integer, got {value!r}")


def _nonnegative_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise InputError(None, f"{name} must be a non-negative integer, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if not _is_real(value) or not value > 0:
        raise InputError(None, f"{name} must be a positive finite number, got {value!r}")


def _nonnegative(name: str, value: Any) -> None:
    if not _is_real(value) or not value >= 0:
        raise InputError(None, f"{name} must be a non-negative finite number, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True)
class Indicator:
    """A calcium indicator's response to one spike (times in seconds, amplitude in ΔF/F)."""

    name: str
    tau_rise: float
    tau_decay: float
    amplitude: float  # peak ΔF/F of one isolated spike
    saturation: float | None = None  # ΔF/F ceiling: dff = x / (1 + x / saturation); None: linear

    def __post_init__(self) -> None:
        for key in ("tau_rise", "tau_decay", "amplitude"):
            _positive(f"Indicator.{key}", getattr(self, key))
        if self.tau_rise >= self.tau_decay:
            raise InputError(
                None,
                f"Indicator {self.name!r}: tau_rise ({self.tau_rise} s) must be shorter than "
                f"tau_decay ({self.tau_decay} s)",
            )
        if self.saturation is not None:
            _positive("Indicator.saturation", self.saturation)

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


_INTS = ("n_rois", "n_frames", "n_planes", "chunk_frames", "n_waves", "n_oscillators", "seed")
_NONNEGATIVE = (
    "rate_spread", "wave_amplitude", "oscillator_amplitude", "drift_amplitude",
    "amplitude_spread", "cell_fraction", "baseline_drift", "neuropil_ratio",
    "neuropil_coefficient", "neuropil_activity", "shot_noise", "read_noise", "neuropil_noise",
)  # fmt: skip
_UPPER = {  # beyond these, thinning draws absurd numbers of candidate spikes (or F0 < 0)
    "rate_hz": 200.0, "rate_spread": 2.0, "wave_amplitude": 5.0, "oscillator_amplitude": 5.0,
    "drift_amplitude": 5.0, "cell_fraction": 1.0, "baseline_drift": 0.49,
}  # fmt: skip


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated recording; the same config gives the same data.

    Fluorescence is in arbitrary units (a.u.) on the scale of a two-photon camera's counts.
    Random draws are keyed by ``seed`` and by chunks of ``chunk_frames`` frames, so a longer
    recording with the same config starts with the same frames.
    """

    n_rois: int = 200
    n_frames: int = 3000
    fs: float = 30.0  # volume rate (Hz); plane p is sampled p / (fs * n_planes) s after plane 0
    n_planes: int = 1
    fov: tuple[int, int] = (256, 256)  # (Ly, Lx) pixels per plane
    seed: int = 0
    indicator: str | Indicator = "GCaMP6f"
    # firing: rate_r(t) = nu_r * exp(u_r(t)) / E[exp(u_r)], nu_r lognormal with mean rate_hz
    rate_hz: float = 1.0
    rate_spread: float = 0.5  # sigma of log nu_r
    n_waves: int = 2  # travelling plane waves across the field of view
    n_oscillators: int = 3  # shared oscillators (incommensurate), mixed by position
    wave_amplitude: float = 0.5  # log-rate modulation of each wave
    oscillator_amplitude: float = 0.4  # log-rate modulation of each oscillator at its centre
    drift_amplitude: float = 0.1  # a slow (minutes) shared log-rate drift
    amplitude_spread: float = 0.3  # sigma of log per-ROI spike amplitude
    cell_fraction: float = 0.85  # the rest are non-somatic ROIs with weak signal
    # optics and noise
    soma_radius: float = 5.0  # pixels
    baseline_f: float = 500.0  # mean somatic baseline F0 (a.u.)
    baseline_drift: float = 0.03  # slow relative drift of F0 (bleaching, focus)
    neuropil_ratio: float = 0.8  # neuropil baseline / F0
    neuropil_coefficient: float = 0.7  # true contamination r in F = soma + r * neuropil
    neuropil_sigma: float = 25.0  # pixels: spatial blur of population activity in neuropil
    neuropil_activity: float = 0.5  # gain of blurred population ΔF/F in the neuropil
    shot_noise: float = 1.0  # shot-noise variance per a.u. of signal
    read_noise: float = 5.0  # read-noise standard deviation (a.u.)
    neuropil_noise: float = 0.3  # Fneu noise std relative to F noise at the same level
    chunk_frames: int = 1024  # generation unit; changing it changes the realisation

    def __post_init__(self) -> None:
        object.__setattr__(self, "fov", _fov(self.fov))
        get_indicator(self.indicator)
        for key in ("n_rois", "n_frames", "n_planes", "chunk_frames"):
            _positive_int(key, getattr(self, key))
        for key in ("n_waves", "n_oscillators", "seed"):
            _nonnegative_int(key, getattr(self, key))
        for key in ("fs", "rate_hz", "soma_radius", "baseline_f", "neuropil_sigma"):
            _positive(key, getattr(self, key))
        for key in _NONNEGATIVE:
            _nonnegative(key, getattr(self, key))
        for key, upper in _UPPER.items():
            if getattr(self, key) > upper:
                raise InputError(None, f"{key} must be at most {upper}, got {getattr(self, key)}")
        if self.n_rois < self.n_planes:
            raise InputError(
                None, f"n_rois ({self.n_rois}) must be at least n_planes ({self.n_planes})"
            )
        if 4 * self.soma_radius > min(self.fov):
            raise InputError(
                None, f"soma_radius {self.soma_radius} px is too large for the fov {self.fov}"
            )
        for key in _INTS:  # plain Python numbers, so that to_json works with numpy inputs
            object.__setattr__(self, key, int(getattr(self, key)))
        for key in ("fs", "rate_hz", "soma_radius", "baseline_f", "neuropil_sigma", *_NONNEGATIVE):
            object.__setattr__(self, key, float(getattr(self, key)))

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
