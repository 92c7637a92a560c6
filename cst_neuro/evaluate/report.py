"""Evaluation reports: per-seed scores, mean ± sd tables, JSON, markdown and figures.

matplotlib is optional (the ``eval`` extra) and imported only when a figure is drawn; a
report without it still writes its JSON and markdown.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cst_neuro.atomic import OutputKind, atomic_folder, check_output
from cst_neuro.errors import OutputError
from cst_neuro.evaluate.baselines import CLASSIC
from cst_neuro.evaluate.models import MODEL_METHODS

log = logging.getLogger(__name__)

REPORT = OutputKind(
    "an evaluation report", folder=True, recognise=lambda p: (p / "report.json").is_file()
)

NAMES = {
    "hold": "hold-last",
    "linear": "linear",
    "pchip": "PCHIP",
    "cubic": "cubic spline",
    "gp": "windowed GP",
    "lowrank": "low-rank + linear",
    "mean": "ROI mean",
    "nearest": "nearest ROI",
    "idw": "inverse-distance",
    "ridge": "ridge from others",
    "persistence": "persistence",
    "ar": "AR(p)",
    "var": "ridge VAR(1)",
    "cst": "cst (prior + fine-tune)",
    "cst-zero-shot": "cst (prior zero-shot)",
    "cst-scratch": "cst (from scratch)",
    "transformer": "transformer",
    "paper": "paper",
}
METRICS = (
    "nmse",
    "r",
    "clean_nmse",
    "smooth_d2",
    "slope_jump",
    "onset_mae_ms",
    "onset_sd_ms",
    "seconds",
    "epochs",
)


@dataclass
class EvaluationReport:
    """Scores of every method on one recording and task; ``runs`` holds one dict per seed."""

    dataset: str
    task: str
    label: str
    methods: list[str]
    runs: list[dict[str, dict[str, float]]]
    settings: dict[str, Any] = field(default_factory=dict)
    example: dict[str, Any] | None = None

    def stat(self, method: str, metric: str) -> tuple[float, float]:
        """Mean and sd over seeds (sd 0 for one seed; NaN when never measured)."""
        vals = [run[method][metric] for run in self.runs if metric in run.get(method, {})]
        vals = [v for v in vals if np.isfinite(v)]
        if not vals:
            return float("nan"), float("nan")
        return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0

    def baselines(self) -> list[str]:
        return [m for m in self.methods if m not in MODEL_METHODS]

    def best_baseline(self, among: tuple[str, ...] | None = None) -> str | None:
        """The baseline with the lowest mean test NMSE (optionally among some)."""
        pool = [m for m in self.baselines() if among is None or m in among]
        pool = [m for m in pool if np.isfinite(self.stat(m, "nmse")[0])]
        return min(pool, key=lambda m: self.stat(m, "nmse")[0]) if pool else None

    def summary(self) -> dict[str, float]:
        """Flat key numbers: ``{method}_nmse``, ``best_baseline_nmse``, ``cst_vs_best_baseline``."""
        out: dict[str, float] = {}
        for method in self.methods:
            for metric in ("nmse", "r", "clean_nmse", "seconds"):
                mean, sd = self.stat(method, metric)
                if np.isfinite(mean):
                    out[f"{method}_{metric}"] = mean
                    if metric == "nmse":
                        out[f"{method}_nmse_sd"] = sd
        best = self.best_baseline()
        classic = self.best_baseline(CLASSIC)
        if best is not None:
            out["best_baseline_nmse"] = self.stat(best, "nmse")[0]
        if classic is not None:
            out["best_classic_nmse"] = self.stat(classic, "nmse")[0]
        for mode in MODEL_METHODS:
            if f"{mode}_nmse" in out and best is not None:
                out[f"{mode}_vs_best_baseline"] = out[f"{mode}_nmse"] / out["best_baseline_nmse"]
        if "wall_seconds" in self.settings:
            out["wall_seconds"] = float(self.settings["wall_seconds"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvaluationReport:
        raw = {k: v for k, v in raw.items() if k != "summary"}
        return cls(**raw)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> EvaluationReport:
        """A report from its ``report.json`` (or the folder holding it)."""
        path = Path(path)
        path = path / "report.json" if path.is_dir() else path
        return cls.from_dict(json.loads(path.read_text()))

    def table(self) -> str:
        """Markdown table: mean ± sd over seeds of each metric, best NMSE in bold."""
        metrics = [m for m in METRICS if any(np.isfinite(self.stat(x, m)[0]) for x in self.methods)]
        best = min(
            (self.stat(m, "nmse")[0] for m in self.methods if np.isfinite(self.stat(m, "nmse")[0])),
            default=np.nan,
        )
        head = "| method | " + " | ".join(HEADERS[m] for m in metrics) + " |"
        lines = [head, "|---" * (len(metrics) + 1) + "|"]
        for method in self.methods:
            cells = []
            for metric in metrics:
                mean, sd = self.stat(method, metric)
                text = fmt(mean, sd, metric)
                if metric == "nmse" and mean == best:
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {NAMES.get(method, method)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        n = len(self.runs)
        s = self.settings
        out = [
            f"# {self.dataset}: {self.label}",
            "",
            f"{s.get('frames')} frames × {s.get('rois')} ROIs at {s.get('fs', 0):g} Hz; "
            f"{n} seed(s), mean ± sd; NMSE per ROI on held-out test samples (lower is "
            f"better, 1 = the ROI's mean); model budget {s.get('minutes_per_fit')} min per fit; "
            f"wall time {s.get('wall_seconds')} s.",
            "",
            self.table(),
            "",
        ]
        summary = self.summary()
        if "cst_vs_best_baseline" in summary:
            out.append(
                f"cst / best baseline ({NAMES[self.best_baseline() or '']}): "
                f"{summary['cst_vs_best_baseline']:.3f}"
            )
        return "\n".join(out) + "\n"

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write report.json, report.md and figures into ``out_dir``, atomically."""
        out_dir = check_output(out_dir, REPORT, overwrite=True)
        with atomic_folder(out_dir, overwrite=True) as tmp:
            (tmp / "report.md").write_text(self.markdown())
            if self.example is not None:
                plot_example(self, tmp / "traces.png")
            (tmp / "report.json").write_text(json.dumps(self.to_dict(), indent=1, default=float))
        return out_dir


HEADERS = {
    "nmse": "NMSE",
    "r": "r",
    "clean_nmse": "NMSE vs clean",
    "smooth_d2": "f'' energy",
    "slope_jump": "slope jump",
    "onset_mae_ms": "onset error (ms)",
    "onset_sd_ms": "onset sd (ms)",
    "seconds": "seconds",
    "epochs": "epochs",
}


def fmt(mean: float, sd: float, metric: str = "nmse") -> str:
    """``mean ± sd`` with digits suited to the metric; ``–`` when not measured."""
    if not np.isfinite(mean):
        return "–"
    if metric in ("seconds", "epochs", "onset_mae_ms", "onset_sd_ms"):
        digits = ".2g" if mean < 10 else ".0f"
        return f"{mean:{digits}}" if sd == 0 else f"{mean:{digits}} ± {sd:{digits}}"
    digits = ".3g" if metric in ("smooth_d2", "slope_jump") else ".3f"
    return f"{mean:{digits}}" if sd == 0 else f"{mean:{digits}} ± {sd:{digits}}"


def pyplot() -> Any:
    """matplotlib.pyplot with a file-only backend; a clear error when it is not installed."""
    try:
        import matplotlib
    except ImportError as e:
        raise OutputError(
            "figures", "matplotlib is needed for figures: pip install 'cst-neuro[eval]'"
        ) from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_example(report: EvaluationReport, path: Path, methods: tuple[str, ...] = ()) -> None:
    """Example trace: truth at full rate, observed samples, dense reconstructions."""
    ex = report.example
    if ex is None:
        return
    try:
        plt = pyplot()
    except OutputError as e:
        log.warning("%s: figure skipped (%s)", path, e)
        return
    preferred = ("linear", "cubic", "lowrank", "gp", *MODEL_METHODS)
    show = methods or tuple(m for m in preferred if m in ex["methods"])
    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=90)
    ax.plot(ex["truth_time"], ex["truth"], color="0.6", lw=1.0, label="truth (held out)")
    ax.plot(ex["observed_time"], ex["observed"], "ko", ms=3, label="observed")
    for method in show:
        ax.plot(ex["time"], ex["methods"][method], lw=1.1, label=NAMES.get(method, method))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("ΔF/F")
    ax.set_title(f"{report.dataset}: {report.label}, ROI {ex['roi']}", fontsize=9)
    ax.legend(fontsize=6, ncol=4, loc="upper right", frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
