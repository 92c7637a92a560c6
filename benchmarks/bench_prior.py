"""How fast fine-tuning the calcium prior gets where training from scratch gets.

    python benchmarks/bench_prior.py --minutes 4 [--prior PATH] [--threads 1]

For each recording (real ones from ``../shared/data`` outside the prior's corpus, decimated
×4 as in the single-cell and population evaluations: the model sees every 4th frame), two
fits with the same validation frames and the same budget: from scratch (``prior = none``)
and from the prior (`fit`'s default). Both use fine-tuning's validation blocks of one frame
(``val_block = 1``; a fit from scratch would otherwise hold out blocks of 4, other frames
and a harder task, and the losses would not compare). Each epoch's validation loss is timed (fit's
callback). Reported: the scratch run's best validation loss and when it reached it, when
the fine-tuning run first reached that loss (the few seconds of binding the prior when the
prior is already there), and their ratio: the target is ≤ ¼. Both fits run in this one process,
one after the other, on the same threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VAL_BLOCK = 1  # both fits hold out the same single frames


def recordings() -> dict[str, Any]:
    """Recordings outside the prior's corpus, each as the decimated Recording a fit sees."""
    from cst_neuro.evaluate.recording import load_traces, masked_recording
    from cst_neuro.evaluate.spikes import load_ground_truth
    from cst_neuro.io import open_recording

    out = {}
    for gt in load_ground_truth(DATA / "ground_truth" / "DS30_GCaMP8f_m_V1_471994_1.mat")[1:3]:
        traces = load_traces(gt.recording)
        out[gt.name] = masked_recording(traces, np.isfinite(traces.values), stride=4)
    zebrafish = DATA / "traces" / "zebrafish_pDp_ogb1_7.5Hz_02.mat"
    traces = load_traces(open_recording(zebrafish, fs=7.5))
    out[zebrafish.name] = masked_recording(traces, np.isfinite(traces.values), stride=2)
    return out


def timed_fit(ds: Any, prior: str, minutes: float) -> list[tuple[float, float]]:
    """(seconds since the start, validation loss) after each epoch, and before the first."""
    from cst_neuro.fit_config import FitConfig
    from cst_neuro.train import fit

    rows: list[tuple[float, float]] = []
    start = time.perf_counter()

    def each_epoch(epoch: int, row: dict[str, float]) -> None:
        rows.append((time.perf_counter() - start, row["val"]))

    with tempfile.TemporaryDirectory() as tmp:
        if prior != "none":  # the prior bound to the recording: its loss before any training
            zero_shot = FitConfig(prior=prior, max_epochs=0, val_block=VAL_BLOCK)
            zero = fit(ds, Path(tmp) / "zero.pt", config=zero_shot)
            rows.append((time.perf_counter() - start, zero.best_val))
        start = time.perf_counter() - (rows[0][0] if rows else 0.0)
        config = FitConfig(prior=prior, max_minutes=minutes, patience=1000, val_block=VAL_BLOCK)
        fit(ds, Path(tmp) / "m.pt", config=config, callback=each_epoch)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="budget of each fit")
    parser.add_argument("--prior", default="default", help="the prior to fine-tune")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "minutes": args.minutes}
    for name, ds in recordings().items():
        scratch = timed_fit(ds, "none", args.minutes)
        tuned = timed_fit(ds, args.prior, args.minutes)
        best_at, best = min(scratch, key=lambda r: (r[1], r[0]))
        reached = next((t for t, v in tuned if v <= best), None)
        report[name] = {
            "scratch_best_val": round(best, 4),
            "scratch_seconds_to_best": round(best_at, 1),
            "fine_tune_seconds_to_it": None if reached is None else round(reached, 1),
            "ratio": None if reached is None else round(reached / max(best_at, 1e-9), 3),
            "fine_tune_best_val": round(min(v for _, v in tuned), 4),
        }
        print(name, json.dumps(report[name]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
