"""The GPU check a session with a lent GPU runs first (under 5 minutes), in one script.

    python benchmarks/bench_gpu.py [--out gpu_report.json]

On a machine without a CUDA GPU it prints one line saying so and exits 0. Otherwise, in
order, each step timed and reported as JSON (stdout, and ``--out``):

1. the GPU test subset (``pytest -m gpu``): CUDA fit and reconstruct, bf16 against fp32;
2. a bf16 training step of the default CST (Sobolev term on) with the SDPA kernel that ran
   (flash, memory-efficient or math: read from the profiler's kernel names), tokens/s and
   the model FLOP rate as a fraction of the bf16 matmul peak measured in this process;
3. the decoder query rate (sub-frame queries/s from a cached context);
4. DDP: ``torchrun`` fit over every GPU present (NCCL), against one GPU, same budget;
5. ``cst-neuro reconstruct --upsample 4`` of a simulated 1,000-ROI recording on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env or os.environ.copy()
    )
    return {
        "command": " ".join(cmd),
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "tail": (proc.stdout + proc.stderr)[-1500:],
    }


def matmul_peak(torch: Any, dtype: Any, n: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of an n×n matrix product in ``dtype`` on the GPU (its practical peak)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def training_step(torch: Any) -> dict[str, Any]:
    """One bf16 training step's rate, its SDPA kernel and its share of the bf16 peak."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from cst_neuro.fit_config import FitConfig
    from cst_neuro.model.modes import get_mode
    from cst_neuro.pretrain import PretrainConfig
    from cst_neuro.pretrain.loop import batch_at
    from cst_neuro.train import TrainStep

    config = PretrainConfig(batch_size=32, max_channels=48, max_queries=512)
    mode = get_mode("cst")
    torch.manual_seed(0)
    model = mode.build(mode.make_config(config.network())).cuda()
    step = TrainStep(model, mode, FitConfig(n_collocation=config.n_collocation).sobolev())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device="cuda").manual_seed(0)
    batches = [tuple(t.cuda() for t in batch_at(config, [], i, 0)) for i in range(12)]

    def run(ctx: Any, qry: Any) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step(ctx, qry, gen)
        loss.backward()
        opt.step()

    for ctx, qry in batches[:2]:
        run(ctx, qry)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for ctx, qry in batches[2:]:
        run(ctx, qry)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 10
    tokens = sum(int(c.mask.sum() + q.mask.sum()) for c, q in batches[2:]) / 10
    counter = FlopCounterMode(display=False)
    with counter:
        run(*batches[2])
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(*batches[3])
        torch.cuda.synchronize()
    names = " ".join(e.key.lower() for e in prof.key_averages())
    kernel = next(
        (k for k, tag in (("flash", "flash"), ("efficient", "efficient"), ("cudnn", "cudnn"))
         if tag in names),
        "math",
    )  # fmt: skip
    peak = matmul_peak(torch, torch.bfloat16)
    flops = counter.get_total_flops() / seconds
    return {
        "step_s": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds),
        "sdpa_kernel": kernel,
        "model_tflops": round(flops / 1e12, 2),
        "bf16_matmul_peak_tflops": round(peak / 1e12, 1),
        "mfu_of_measured_bf16_peak": round(flops / peak, 4),
    }


def query_rate(torch: Any) -> dict[str, Any]:
    """Sub-frame decoder queries per second from a cached context, 1,000 ROIs, bf16."""
    from cst_neuro.model.cst import CST, CSTConfig
    from cst_neuro.pretrain import PretrainConfig

    model = CST(CSTConfig(**{**PretrainConfig().network(), "n_ids": 1000})).cuda().eval()
    n_ctx = 1000 * 32
    values = torch.randn(1, n_ctx, 1, device="cuda")
    coords = torch.rand(1, n_ctx, 3, device="cuda") * torch.tensor([31.0, 1, 1], device="cuda")
    ids = torch.arange(1000, device="cuda").repeat(32)[None]
    channels = torch.zeros(1, 1000, 6, device="cuda")
    seconds = torch.tensor([1 / 30], device="cuda")
    query = torch.rand(1, 16_000, 3, device="cuda") * torch.tensor([31.0, 1, 1], device="cuda")
    query_ids = torch.randint(0, 1000, (1, 16_000), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ctx = model.encode(values, coords, ids, channels=channels, seconds_per_frame=seconds)
        for _ in range(3):
            model.decode(ctx, query, query_ids)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            model.decode(ctx, query, query_ids)
        torch.cuda.synchronize()
    return {"queries_per_s": round(20 * 16_000 / (time.perf_counter() - start))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine; nothing to check")
        return
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
    }
    python = sys.executable
    report["gpu_tests"] = _run(
        [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], 150
    )
    report["training_step"] = training_step(torch)
    report["decoder"] = query_rate(torch)
    with tempfile.TemporaryDirectory() as tmp:
        sim, store = Path(tmp) / "sim", Path(tmp) / "sim.zarr"
        cli = [python, "-m", "cst_neuro"]
        _run([*cli, "simulate", "-o", str(sim), "--rois", "1000", "--frames", "6000"], 120)
        _run([*cli, "ingest", str(sim), "-o", str(store)], 120)
        report["fit_1_gpu"] = _run(
            [*cli, "fit", str(store), "-o", f"{tmp}/one.pt", "--max-minutes", "0.5"], 120
        )
        n = torch.cuda.device_count()
        if n > 1:
            report["fit_ddp"] = _run(
                [python, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "-m",
                 "cst_neuro", "fit", str(store), "-o", f"{tmp}/ddp.pt", "--max-minutes", "0.5"],
                150,
            )  # fmt: skip
        report["reconstruct_x4"] = _run(
            [*cli, "reconstruct", f"{tmp}/one.pt", str(store), "-o", f"{tmp}/up.zarr",
             "--upsample", "4"],
            150,
        )  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
