"""Accuracy smoke test: sub-frame reconstruction against the simulator's clean truth.

A recording is simulated at 2·fs and the model sees only every other frame (rate fs):
the withheld frames lie exactly half-way between observed ones, and the simulator gives
their clean ΔF/F exactly. Measured ΔF/F relates to the clean one through a per-ROI
affine map (baseline and neuropil), which is fitted on the OBSERVED frames only and
applied to the clean truth at the withheld times, so that every method is scored against
the same target in the measured units. Nothing from the withheld frames is used before
scoring. Methods: the ``cst`` model (default settings, a time budget), linear, PCHIP,
natural cubic spline, low-rank denoising (PCA across ROIs, rank chosen on the observed
frames by a held-out split) + linear, and the zero-skill per-ROI mean. Metric: NMSE per
ROI (MSE over withheld frames ÷ the target's variance), averaged over ROIs.

    python benchmarks/bench_accuracy.py --minutes 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import CubicSpline, PchipInterpolator

from cst_neuro.preprocess import compute_dff
from cst_neuro.reconstruct import Reconstructor
from cst_neuro.simulate import SimulationConfig, simulate
from cst_neuro.train import FitConfig, fit

CONDITIONS = {
    "default (GCaMP6f, F0 500)": {},
    "bright (GCaMP6s, F0 5000)": {"indicator": "GCaMP6s", "baseline_f": 5000.0},
}


def nmse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.mean((pred - target) ** 2, axis=0) / np.var(target, axis=0)))


def low_rank(y: np.ndarray, rank: int) -> np.ndarray:
    mean = y.mean(0)
    u, s, vt = np.linalg.svd(y - mean, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank] + mean


def choose_rank(t: np.ndarray, y: np.ndarray) -> int:
    """Rank whose denoised odd frames best predict the (noisy) even frames: observed only."""
    fit_t, fit_y, val_t, val_y = t[::2], y[::2], t[1::2], y[1::2]
    scores = {}
    for rank in (2, 5, 10, 20, 40):
        den = low_rank(fit_y, min(rank, min(fit_y.shape) - 1))
        scores[rank] = nmse(interp(val_t, fit_t, den), val_y)
    return min(scores, key=scores.get)


def interp(t_new: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(t_new, t, y[:, r]) for r in range(y.shape[1])], axis=1)


def run_condition(overrides: dict, args: argparse.Namespace, work: Path) -> dict[str, float]:
    sim = simulate(
        SimulationConfig(
            n_rois=args.rois, n_frames=2 * args.frames, fs=2 * 30.0, seed=args.seed, **overrides
        )
    )
    full = compute_dff(sim.recording()).load()
    observed = full.isel(time=slice(0, None, 2))
    observed.attrs["fs"] = 30.0
    t_obs, t_held = observed["time"].values, full["time"].values[1::2][:-1]
    y = observed["dff"].values.astype(np.float64)
    truth_obs, truth_held = sim.clean_dff(t_obs), sim.clean_dff(t_held)
    design = np.stack([truth_obs, np.ones_like(truth_obs)], axis=-1)
    coef = np.array(
        [np.linalg.lstsq(design[:, r], y[:, r], rcond=None)[0] for r in range(y.shape[1])]
    )
    target = truth_held * coef[:, 0] + coef[:, 1]
    rank = choose_rank(t_obs, y)
    results = {
        "mean (zero skill)": nmse(np.broadcast_to(y.mean(0), target.shape), target),
        "linear": nmse(interp(t_held, t_obs, y), target),
        "pchip": nmse(PchipInterpolator(t_obs, y, axis=0)(t_held), target),
        "cubic spline": nmse(CubicSpline(t_obs, y, axis=0, bc_type="natural")(t_held), target),
        f"low-rank (rank {rank}) + linear": nmse(interp(t_held, t_obs, low_rank(y, rank)), target),
    }
    start = time.perf_counter()
    model_path = work / "model.pt"
    result = fit(observed, model_path, config=FitConfig(max_minutes=args.minutes, seed=args.seed))
    fit_s = time.perf_counter() - start
    rec = Reconstructor.from_checkpoint(model_path, observed)
    results["cst"] = nmse(rec.predict(t_held)[..., 0], target)
    results["cst fit seconds"] = round(fit_s, 1)
    results["cst epochs"] = result.epochs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--frames", type=int, default=3000, help="observed frames (30 Hz)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CONDITIONS.items():
            report[name] = run_condition(overrides, args, Path(tmp))
            print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
