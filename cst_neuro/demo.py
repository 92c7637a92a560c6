"""The one-command demo: the whole pipeline on a simulated recording, scored against its truth.

``run_demo`` simulates a Suite2p folder (``cst_neuro.simulate``: exact clean ΔF/F at any
real time), then runs the batch steps in this process: ingest (ΔF/F), fit (a CST within a
time budget), reconstruct at 4× the frame rate. It scores the reconstruction and classic
baselines (``cst_neuro.evaluate.baselines``: linear, PCHIP, low-rank + linear) against
the clean truth at every sub-frame time, separately between frames (never observed) and
at the frames themselves (observed with noise), and draws a figure. Clean ΔF/F and
measured ΔF/F differ by a per-ROI baseline and gain, so the truth is first mapped into
measured units by an affine fit on the observed frames only
(``cst_neuro.evaluate.metrics.affine_to``). With the defaults it runs in under five
minutes on two CPU cores (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cst_neuro.atomic import OutputKind, atomic_file, check_output, write_text
from cst_neuro.errors import OutputError

log = logging.getLogger(__name__)

FIGURE = "demo.png"
SCORES = "scores.csv"
SCORES_MD = "scores.md"
SIMULATION = "suite2p"
MARKER = ".cst-neuro-demo"  # in the demo's folder: --overwrite replaces only such folders
DEMO = OutputKind(
    "the folder of a cst-neuro demo", folder=True, recognise=lambda p: (p / MARKER).is_file()
)


@dataclass(frozen=True)
class DemoConfig:
    """The demo's recording and budget (the defaults finish in under 5 minutes on 2 cores)."""

    n_rois: int = 60
    n_frames: int = 1800  # one minute at 30 Hz
    fs: float = 30.0
    seed: int = 0
    upsample: int = 4
    fit_minutes: float = 2.5
    fit: dict[str, Any] = field(default_factory=dict)  # further FitConfig settings


@dataclass
class DemoResult:
    """Where the demo wrote everything, its scores and how long it took."""

    outdir: Path
    paths: dict[str, Path]
    scores: list[dict[str, Any]]
    seconds: float


def run_demo(
    outdir: str | os.PathLike[str], *, config: DemoConfig | None = None, overwrite: bool = False
) -> DemoResult:
    """Simulate → ingest → fit → reconstruct ×K → score against ground truth → figure."""
    from cst_neuro.batch.settings import BatchSettings
    from cst_neuro.batch.steps import Job, run_step
    from cst_neuro.simulate import SimulationConfig, simulate, write_suite2p
    from cst_neuro.train import FitConfig

    config = config or DemoConfig()
    start = time.perf_counter()
    outdir = _prepare(Path(outdir), overwrite=overwrite)
    sim = simulate(
        SimulationConfig(n_rois=config.n_rois, n_frames=config.n_frames, fs=config.fs,
                         seed=config.seed)
    )  # fmt: skip
    folder = write_suite2p(sim, outdir / SIMULATION, layout="v1", overwrite=True)
    settings = BatchSettings(
        fit=FitConfig.from_dict({"max_minutes": config.fit_minutes, **config.fit}),
        upsample=config.upsample,
    )
    job = Job("demo", str(folder), str(outdir), settings, ("ingest", "fit", "reconstruct"))
    ingest = run_step("ingest", job)
    fit = run_step("fit", job, ingest)
    run_step("reconstruct", job, fit)
    log.info("fit: %s", fit.metrics)
    scores, example = score_against_truth(sim, job.store, job.output("reconstruct"))
    paths = {
        "simulated Suite2p folder": folder,
        "recording (zarr)": job.store,
        "model": job.output("fit"),
        f"reconstruction x{config.upsample} (zarr)": job.output("reconstruct"),
        "scores": _write_scores(outdir, scores),
    }
    figure = plot_demo(outdir / FIGURE, scores, example)
    if figure is not None:
        paths["figure"] = figure
    return DemoResult(outdir, paths, scores, time.perf_counter() - start)


def _prepare(outdir: Path, *, overwrite: bool) -> Path:
    """The demo's folder: new, empty, or (with ``overwrite``) an earlier demo's."""
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise OutputError(outdir, "is not empty; pass --overwrite to replace the demo's files")
    if outdir.exists() and not (outdir.is_dir() and not any(outdir.iterdir())):
        outdir = check_output(outdir, DEMO, overwrite=overwrite)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / MARKER).write_text("written by cst-neuro demo; --overwrite may replace it\n")
    except OSError as e:
        raise OutputError(outdir, f"cannot create folder ({e.strerror or e})") from e
    return outdir.resolve()


def score_against_truth(
    sim: Any, store: Path, reconstruction: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """NMSE and r of CST and baselines against the clean truth at the reconstruction's times."""
    from cst_neuro.evaluate import baselines as bl
    from cst_neuro.evaluate import metrics as mt
    from cst_neuro.store import open_store

    ds, rec = open_store(store), open_store(reconstruction)
    rois = ds["roi"].values
    t_obs = ds["time"].values
    y = ds["dff"].values.astype(np.float64)  # (T, C) measured ΔF/F at the frames
    t_new = rec["time"].values
    k = int(rec.attrs["upsample"])
    # The truth in measured units: an affine map per ROI fitted on the observed frames only.
    clean = np.vstack([sim.clean_dff_frames()[:, rois], sim.clean_dff(t_new, roi=rois)])
    fit_rows = np.zeros(clean.shape, bool)
    fit_rows[: t_obs.size] = True
    noisy = np.vstack([y, np.full((t_new.size, rois.size), np.nan)])
    truth = mt.affine_to(clean, noisy, fit_rows)[t_obs.size :]
    predictions = {
        "cst": rec["dff"].values.astype(np.float64),
        "linear": bl.linear(t_obs, y, t_new),
        "pchip": bl.pchip(t_obs, y, t_new),
        "low-rank + linear": _low_rank(t_obs, y, t_new),
    }
    between = np.broadcast_to((np.arange(t_new.size) % k != 0)[:, None], truth.shape)
    variance = np.var(truth, axis=0)
    scores = [
        {
            "method": name,
            "nmse_between_frames": mt.nmse(pred, truth, between, variance),
            "nmse_at_frames": mt.nmse(pred, truth, ~between, variance),
            "r_between_frames": mt.pearson(pred, truth, between),
        }
        for name, pred in predictions.items()
    ]
    roi = int(np.argmax(variance))
    example = {
        "roi": int(rois[roi]),
        "t_obs": t_obs,
        "y": y[:, roi],
        "t": t_new,
        "truth": truth[:, roi],
        "pred": {m: p[:, roi] for m, p in predictions.items()},
    }
    return scores, example


def _low_rank(t_obs: np.ndarray, y: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """The population yardstick, its rank chosen by predicting odd frames from even ones."""
    from cst_neuro.evaluate import baselines as bl
    from cst_neuro.evaluate import metrics as mt

    mean, sd = y.mean(0), y.std(0) + 1e-12
    z = (y - mean) / sd
    even, odd = slice(0, None, 2), slice(1, None, 2)
    comps = bl.pca_components(z[even])
    mask = np.ones_like(z[odd], bool)

    def held_out(rank: int) -> float:
        pred = bl.low_rank(t_obs[even], z[even], t_obs[odd], components=comps, rank=rank)
        return mt.nmse(pred, z[odd], mask, np.ones(z.shape[1]))

    ranks = [g["rank"] for g in bl.GRIDS["lowrank"] if g["rank"] <= comps.shape[1]]
    best = min(ranks, key=held_out)
    return bl.low_rank(t_obs, z, t_new, components=bl.pca_components(z), rank=best) * sd + mean


def _write_scores(outdir: Path, scores: list[dict[str, Any]]) -> Path:
    from cst_neuro.batch.report import markdown_table

    columns = list(scores[0])
    lines = [",".join(columns)] + [",".join(f"{s[c]}" for c in columns) for s in scores]
    write_text(outdir / SCORES_MD, markdown_table(scores, columns) + "\n")
    return write_text(outdir / SCORES, "\n".join(lines) + "\n")


def plot_demo(path: Path, scores: list[dict[str, Any]], example: dict[str, Any]) -> Path | None:
    """One ROI's sub-frame reconstruction beside the truth, and every method's NMSE."""
    from cst_neuro.evaluate.report import pyplot

    try:
        plt = pyplot()
    except OutputError as e:
        log.warning("%s: figure skipped (%s)", path, e)
        return None
    fig, (ax, bars) = plt.subplots(
        1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 1]}, dpi=100
    )
    t0 = example["t_obs"][example["t_obs"].size // 2]
    show = (example["t"] >= t0) & (example["t"] <= t0 + 4.0)
    shown = (example["t_obs"] >= t0) & (example["t_obs"] <= t0 + 4.0)
    ax.plot(example["t"][show], example["truth"][show], color="0.55", lw=2, label="clean truth")
    ax.plot(example["t_obs"][shown], example["y"][shown], "k.", ms=4, label="observed frames")
    for method, style in (("linear", ":"), ("low-rank + linear", "--"), ("cst", "-")):
        ax.plot(example["t"][show], example["pred"][method][show], style, lw=1.2, label=method)
    ax.set(xlabel="time (s)", ylabel=f"ΔF/F of ROI {example['roi']}")
    ax.legend(fontsize=7, ncol=5, loc="lower left", bbox_to_anchor=(0, 1), frameon=False)
    names = [s["method"] for s in scores]
    bars.barh(names, [s["nmse_between_frames"] for s in scores], color="C0")
    bars.invert_yaxis()
    bars.set(xlabel="NMSE", title="between frames (lower is better)")
    bars.title.set_fontsize(9)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
