"""Ingest benchmark: a large simulated Suite2p folder → zarr, against a plain copy.

Generates a Suite2p 1.x folder with the simulator (default 5,000 ROIs × 100,000 frames:
float32 F, Fneu and spks, 2 GB each), then in one run and in separate child processes:
a plain read-and-copy of the folder's bytes, ``cst-neuro ingest`` of the folder, and the
plain copy again. Reports wall time and peak RSS (from ``wait4``) of each child, the
ingest/copy ratio, and checks the store against the source for a few ROIs.

    python benchmarks/bench_ingest.py --rois 5000 --frames 100000 --workdir /tmp/cst-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

COPY_SCRIPT = """
import pathlib, shutil, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in sorted(src.rglob('*')):
    if f.is_file():
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(f, 'rb') as fi, open(out, 'wb') as fo:
            shutil.copyfileobj(fi, fo, 64 << 20)
        import os; os.sync()
"""


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB) of that child alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024.0


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


GENERATE_SCRIPT = """
import sys
from cst_neuro.simulate import SimulationConfig, simulate, write_suite2p
rois, frames, seed = (int(a) for a in sys.argv[2:5])
side = max(256, int(12 * rois**0.5))  # room for every soma without overlap
sim = simulate(SimulationConfig(n_rois=rois, n_frames=frames, fs=30.0, seed=seed,
                                fov=(side, side)))
write_suite2p(sim, sys.argv[1], layout="v1", overwrite=True)
"""


def check_store(store: Path, folder: Path) -> None:
    """Spot-check F and ΔF/F of a few ROIs against the source files."""
    from cst_neuro.io import open_recording
    from cst_neuro.preprocess import compute_dff
    from cst_neuro.store import open_store

    out = open_store(store)
    src = open_recording(folder, format="suite2p", all_rois=True)
    picks = np.linspace(0, out.sizes["roi"] - 1, 4).astype(int)
    ref = compute_dff(src.isel(roi=picks))
    np.testing.assert_array_equal(out["F"].isel(roi=picks).values, src["F"].isel(roi=picks).values)
    np.testing.assert_allclose(out["dff"].isel(roi=picks).values, ref["dff"].values, rtol=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=5000)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cst-bench-ingest"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    work = args.workdir
    folder, copy, store = work / "suite2p", work / "copy", work / "out.zarr"
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    # the parent stays small: a child's peak RSS includes the parent's image before exec
    gen_s, _ = run_child(
        [py, "-c", GENERATE_SCRIPT, str(folder), str(args.rois), str(args.frames), str(args.seed)]
    )
    size = folder_bytes(folder)
    results = {"python": run_child([py, "-c", "import numpy, cst_neuro"])}
    for name in ("copy", "ingest", "copy_again"):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
        if name.startswith("copy"):
            cmd = [py, "-c", COPY_SCRIPT, str(folder), str(copy)]
        else:
            cmd = [py, "-m", "cst_neuro", "ingest", str(folder), "-o", str(store), "--all-rois"]
        results[name] = run_child(cmd)
        if name == "ingest":
            check_store(store, folder)
            store_size = folder_bytes(store)
    copy_s = min(results["copy"][0], results["copy_again"][0])
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})",
        "rois": args.rois,
        "frames": args.frames,
        "folder_GB": round(size / 1e9, 2),
        "store_GB": round(store_size / 1e9, 2),
        "generate_s": round(gen_s, 1),
        "copy_s": [round(results["copy"][0], 1), round(results["copy_again"][0], 1)],
        "python_import_peak_rss_MiB": round(results["python"][1]),
        "copy_peak_rss_MiB": round(results["copy"][1]),
        "ingest_s": round(results["ingest"][0], 1),
        "ingest_peak_rss_MiB": round(results["ingest"][1]),
        "ingest_over_copy": round(results["ingest"][0] / copy_s, 2),
    }
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
