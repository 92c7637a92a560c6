"""Scale benchmark: a simulated session through the CLI, beside the floor of writing it.

A new user's session (issue 17): ``cst-neuro simulate`` of 1,000 ROIs × 30,000 frames at
30 Hz (16.7 min; ``--rois 5000`` for a large one), ``ingest`` (every ROI), ``fit
--max-minutes 2`` fine-tuning a prior (``--prior PATH``, default the shipped one), then
``reconstruct --upsample 4``. Each runs in a child process, timed, with that child's own
peak RSS (``wait4``). Beside them, in the same run: the floor, linear interpolation of the
same store to the same times, computed in blocks and written by the same code path
(`cst_neuro.reconstruct.reconstruct` with a linear predictor in place of the model, then
`cst_neuro.store.write_recording`: same chunks, same compressor). Afterwards, in this
process: the reconstruction's FLOP rate, the FLOPs of one block of output times (with its
windows' encodes; torch's FlopCounterMode, attention on the math backend so that it is
counted) times the number of blocks, over the reconstruct's wall time, against the fp32
matmul peak (torch.mm of 2048² matrices, best of before and after); and a spot check of
the written values against `Reconstructor.predict`.

    python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --rois 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_ingest import run_child

UPSAMPLE = 4


class LinearFloor:
    """What `reconstruct` needs of a `Reconstructor`, answered by linear interpolation."""

    def __init__(self, ds: Any) -> None:
        self.var = "dff"
        self.layout = "traces"
        self.windows = self  # reconstruct reads `windows.layout`
        self.t = np.asarray(ds["time"].values, np.float64)
        self.y = np.asarray(ds["dff"].values, np.float32)  # (T, C)

    def predict(self, times: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(self.t, times, side="right") - 1, 0, self.t.size - 2)
        w = ((times - self.t[i]) / (self.t[i + 1] - self.t[i])).astype(np.float32)[:, None]
        return (self.y[i] + w * (self.y[i + 1] - self.y[i]))[..., None]

    def as_image(self, values: np.ndarray) -> np.ndarray:
        return values[..., 0]


def write_floor(store: Path, output: Path) -> None:
    """The floor: linear interpolation of ``store`` at K× its rate, written as a store."""
    from cst_neuro.reconstruct import reconstruct
    from cst_neuro.store import open_store, write_recording

    ds = open_store(store)
    write_recording(reconstruct(LinearFloor(ds), ds, upsample=UPSAMPLE), output)


def reconstruct_flops(model: Path, store: Path) -> tuple[float, int]:
    """FLOPs of one block of output times in the middle of the recording (its windows
    encoded afresh) and the block's values."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from cst_neuro.reconstruct import BLOCK_TIMES, Reconstructor, output_times
    from cst_neuro.store import open_store

    ds = open_store(store)
    rec = Reconstructor.from_checkpoint(model, ds)
    times = output_times(ds, upsample=UPSAMPLE)
    mid = times.size // 2
    block = times[mid : mid + BLOCK_TIMES]
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        values = rec.predict(block)
    return float(counter.get_total_flops()), int(values[..., 0].size)


def spot_check(model: Path, store: Path, output: Path) -> float:
    """Largest difference between written values and `Reconstructor.predict` at a few times."""
    from cst_neuro.reconstruct import Reconstructor
    from cst_neuro.store import open_store

    ds, out = open_store(store), open_store(output)
    rows = np.linspace(0, out.sizes["time"] - 1, 5).astype(int)
    written = out["dff"].isel(time=rows).values
    predicted = Reconstructor.from_checkpoint(model, ds).predict(out["time"].values[rows])
    return float(np.max(np.abs(written - predicted[..., 0])))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cst_neuro", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=30_000)
    parser.add_argument("--prior", default="default", help="fit --prior (default: shipped)")
    parser.add_argument("--fit-minutes", type=float, default=2.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cst-bench-scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--floor", nargs=2, type=Path, metavar=("STORE", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.floor:  # the floor's child process
        write_floor(*args.floor)
        return

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    folder, store, model = work / "suite2p", work / "rec.zarr", work / "model.pt"
    recon, floor = work / "recon.zarr", work / "floor.zarr"
    steps = {  # the parent imports neither torch nor cst_neuro until these are done
        "simulate": cli("simulate", "-o", str(folder), "--rois", str(args.rois),
                        "--frames", str(args.frames), "--seed", str(args.seed)),
        "ingest": cli("ingest", str(folder), "-o", str(store), "--all-rois"),
        "fit": cli("fit", str(store), "-o", str(model), "--prior", args.prior,
                   "--max-minutes", str(args.fit_minutes)),
        "reconstruct": cli("reconstruct", str(model), str(store), "-o", str(recon),
                           "--upsample", str(UPSAMPLE)),
        "floor": [sys.executable, __file__, "--floor", str(store), str(floor)],
    }  # fmt: skip
    results = {name: run_child(cmd) for name, cmd in steps.items()}

    import torch
    from bench_model import matmul_peak

    peak_before = matmul_peak()
    flops, block_values = reconstruct_flops(model, store)
    peak = max(peak_before, matmul_peak())
    n_times = (args.frames - 1) * UPSAMPLE + 1
    values = n_times * args.rois
    recon_s, floor_s = results["reconstruct"][0], results["floor"][0]
    total_flops = flops * values / block_values
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rois": args.rois,
        "frames": args.frames,
        "output_values": values,
        "prior": args.prior,
        **{f"{name}_s": round(wall, 1) for name, (wall, _) in results.items()},
        **{f"{name}_peak_rss_MiB": round(rss) for name, (_, rss) in results.items()},
        "reconstruct_values_per_s": round(values / recon_s),
        "floor_values_per_s": round(values / floor_s),
        "reconstruct_over_floor": round(recon_s / floor_s, 1),
        "reconstruct_gflop": round(total_flops / 1e9),
        "reconstruct_gflops_per_s": round(total_flops / recon_s / 1e9, 2),
        "fp32_matmul_peak_gflops": round(peak / 1e9, 1),
        "fraction_of_fp32_peak": round(total_flops / recon_s / peak, 3),
        "flops_per_value": round(flops / block_values),
        "spot_check_max_abs_diff": spot_check(model, store, recon),
    }
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
