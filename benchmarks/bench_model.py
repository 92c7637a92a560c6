"""Model benchmark: Sobolev overhead, throughput against the matmul peak, query latency.

All in one run, on the same data and threads:

1. training step time of mode ``cst`` (Sobolev k=2) against the same network trained with
   plain MSE (k=0), and the ``paper`` mode (release loss) beside them, at fit's default
   batch size; the steps being compared run in alternation;
2. throughput of the ~1 M-parameter default ``cst`` network in tokens/s and achieved
   FLOP/s (counted with torch's FlopCounterMode) against the machine's fp32
   matrix-multiply peak, measured here with large torch.mm calls before and after the
   model runs (the larger of the two, so a slow moment cannot flatter the fraction);
3. latency of one sub-frame frame from cached contexts (a decode in each of the two
   overlapping windows that hold the time): 1,000 ROIs, and a 128×128 grid (4×4 patches);
4. precision and compilation: the Sobolev training step and a decoder query (1,000 ROIs)
   as fp32 eager, bf16 autocast and fp32 ``torch.compile``, in tokens (queries) per second
   and as a fraction of the matching matmul peak (fp32 and bf16 peaks measured here).
   bf16 runs where the CPU multiplies bf16 in hardware (``device.cpu_has_bf16``: AVX-512
   BF16 or AMX) or with ``--bf16``; elsewhere its peak is still measured and the rows say
   why they were skipped (emulated bf16 is ~100x slower than fp32). Compiling runs only
   with ``--compile``: on a 2-core machine one training step took over 800 s to compile.

    python benchmarks/bench_model.py --threads 2 [--bf16] [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from cst_neuro.data import ChannelWindows, sample_batch
from cst_neuro.device import cpu_has_bf16
from cst_neuro.fit_config import FitConfig
from cst_neuro.model.cst import CST, CSTConfig
from cst_neuro.model.modes import get_mode
from cst_neuro.schema import new_recording
from cst_neuro.train import TrainStep


def timed_together(fns, repeats: int) -> list[float]:
    """Median seconds of each ``fn()`` over ``repeats`` rounds after one warm-up.

    Each round runs every function once, so that the machine's slow and fast moments
    (it is shared) fall on all of them alike and their ratios hold.
    """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    return timed_together([fn], repeats)[0]


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of torch.mm on n×n matrices of ``dtype`` (the machine's practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), repeats)


def recording(n_rois: int, n_frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / 30.0
    signal = np.sin(
        2 * np.pi * rng.uniform(0.2, 2, n_rois) * t[:, None] + rng.uniform(0, 6, n_rois)
    )
    values = (signal + 0.3 * rng.standard_normal((n_frames, n_rois))).astype(np.float32)
    return new_recording(
        {"dff": (("time", "roi"), values)},
        time=t,
        fs=30.0,
        source_format="benchmark",
        source_name="synthetic",
        coords={
            "roi": np.arange(n_rois),
            "roi_y": ("roi", rng.uniform(0, 512, n_rois)),
            "roi_x": ("roi", rng.uniform(0, 512, n_rois)),
        },
    )


def training_step(mode: str, sobolev_k: int, windows, config_kw, repeats: int):
    """(a function running one training step, tokens per step) for one mode/loss."""
    config = FitConfig(mode=mode, sobolev_k=sobolev_k, prior="none", **config_kw).resolved()
    torch.manual_seed(0)
    spec = get_mode(mode)
    settings = {"value_dim": 1, "n_ids": windows.n_channels}
    if mode == "cst":
        settings["n_latent_times"] = config.window // 2
    model = spec.build(spec.make_config(settings))
    step = TrainStep(model, spec, config.sobolev())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    starts = windows.starts()
    batches = [sample_batch(windows, starts, config, rng) for _ in range(repeats + 1)]
    gen = torch.Generator().manual_seed(0)
    it = iter(batches * 2)

    def run() -> None:
        ctx, qry = next(it)
        opt.zero_grad()
        step(ctx, qry, gen).backward()
        opt.step()

    tokens = int(batches[0][0].mask.sum() + batches[0][1].mask.sum())
    return run, tokens


def model_flops(windows, config_kw) -> tuple[float, int]:
    """FLOPs of one cst training step (forward + backward) and its tokens."""
    config = FitConfig(prior="none", **config_kw).resolved()
    model = CST(CSTConfig(value_dim=1, n_ids=windows.n_channels, n_latent_times=config.window // 2))
    step = TrainStep(model, get_mode("cst"), config.sobolev())
    ctx, qry = sample_batch(windows, windows.starts(), config, np.random.default_rng(1))
    counter = FlopCounterMode(display=False)
    with counter:
        step(ctx, qry, torch.Generator().manual_seed(0)).backward()
    return counter.get_total_flops(), int(ctx.mask.sum() + qry.mask.sum())


def precision_rows(
    windows, config_kw: dict, repeats: int, variants: list[str], peaks: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Training-step and decoder-query throughput of each variant (fp32, bf16, compiled)."""
    from cst_neuro.device import autocast

    cpu = torch.device("cpu")
    config = FitConfig(mode="cst", sobolev_k=2, prior="none", **config_kw).resolved()
    ctx, qry = sample_batch(windows, windows.starts(), config, np.random.default_rng(1))
    tokens = int(ctx.mask.sum() + qry.mask.sum())
    flops, _ = model_flops(windows, dict(config_kw, sobolev_k=2))
    decoder, (context, _), query, query_ids = decoder_setup(1000)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        decoder.decode(context, query, query_ids)
    decode_flops = counter.get_total_flops()
    rows = {}
    for variant in variants:
        torch.manual_seed(0)
        model = CST(CSTConfig(value_dim=1, n_ids=windows.n_channels, n_latent_times=16))
        step = TrainStep(model, get_mode("cst"), config.sobolev())
        decode = decoder.decode
        if variant == "compiled":
            step = torch.compile(step, dynamic=False)
            decode = torch.compile(decoder.decode, dynamic=False)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        cast = autocast(cpu, "bf16" if variant == "bf16" else "fp32")

        def train(step=step, opt=opt, gen=gen, cast=cast) -> None:
            opt.zero_grad()
            with cast:
                loss = step(ctx, qry, gen)
            loss.backward()
            opt.step()

        def query_frame(decode=decode, cast=cast) -> None:
            with torch.no_grad(), cast:
                decode(context, query, query_ids)

        step_s, query_s = timed_together([train, query_frame], repeats)
        peak = peaks["bf16" if variant == "bf16" else "fp32"]
        rows[variant] = {
            "train_tokens_per_s": round(tokens / step_s),
            "train_fraction_of_peak": round(flops / step_s / peak, 3),
            "query_per_s": round(query.shape[1] / query_s),
            "query_fraction_of_peak": round(decode_flops / query_s / peak, 3),
        }
    return rows


def decoder_setup(n_channels: int, value_dim: int = 1):
    """A default network, the cached contexts of two overlapping windows of ``n_channels``
    × 32 observed tokens, and one query per channel: (model, contexts, coords, ids)."""
    torch.manual_seed(0)
    model = CST(CSTConfig(value_dim=value_dim, n_ids=n_channels)).eval()
    n_ctx = n_channels * 32
    values, ids = torch.randn(1, n_ctx, value_dim), torch.randint(0, n_channels, (1, n_ctx))
    coords, query = torch.rand(1, n_ctx, 3), torch.rand(1, n_channels, 3)
    with torch.no_grad():
        contexts = [model.encode(v, coords, ids) for v in (values, values.roll(1, dims=1))]
    return model, contexts, query, torch.arange(n_channels)[None]


def query_latency(n_channels: int, value_dim: int, repeats: int) -> float:
    """Seconds to decode one sub-frame frame (all channels) from cached contexts: a decode
    in each of the two overlapping windows that hold the time (reconstruction blends them)."""
    model, contexts, query, ids = decoder_setup(n_channels, value_dim)
    with torch.no_grad():
        return timed(lambda: [model.decode(c, query, ids) for c in contexts], repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rois", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--batch", type=int, default=FitConfig.batch_size, help="windows per step (default: fit's)"
    )
    parser.add_argument("--bf16", action="store_true", help="run bf16 even where it is emulated")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    windows = ChannelWindows(recording(args.rois, 2000), window=32)
    config_kw = dict(window=32, batch_size=args.batch, max_tokens=16384, n_collocation=256)
    peak_before = matmul_peak()
    run_mse, tokens = training_step("cst", 0, windows, config_kw, args.repeats)
    run_sobolev, _ = training_step("cst", 2, windows, config_kw, args.repeats)
    mse, sob = timed_together([run_mse, run_sobolev], args.repeats)
    small = dict(config_kw, max_tokens=2048, batch_size=1)  # paper: O(N²) joint attention
    run_small, paper_tokens = training_step("cst", 0, windows, small, args.repeats)
    run_paper, _ = training_step("paper", 3, windows, small, args.repeats)
    paper_mse, paper = timed_together([run_small, run_paper], args.repeats)
    flops, flop_tokens = model_flops(windows, dict(config_kw, sobolev_k=2))
    peak = max(peak_before, matmul_peak())
    params = CST(CSTConfig(value_dim=1)).num_params()
    peaks = {"fp32": peak, "bf16": matmul_peak(dtype=torch.bfloat16, repeats=1)}
    variants = ["fp32"]
    skipped = {}
    if cpu_has_bf16() or args.bf16:
        variants.append("bf16")
    else:
        skipped["bf16"] = "no AVX-512 BF16 or AMX: bf16 would be emulated (see the peaks)"
    if args.compile:
        variants.append("compiled")
    else:
        skipped["compiled"] = "not asked for (--compile)"
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} ({args.threads} threads, {platform.machine()})",
        "torch": torch.__version__,
        "params_without_ids": params,
        "tokens_per_step": tokens,
        "step_s_cst_mse": round(mse, 4),
        "step_s_cst_sobolev_k2": round(sob, 4),
        "sobolev_over_mse": round(sob / mse, 3),
        "paper_tokens_per_step": paper_tokens,
        "step_s_cst_mse_small": round(paper_mse, 4),
        "step_s_paper_release_loss_small": round(paper, 4),
        "paper_over_cst_mse_small": round(paper / paper_mse, 3),
        "tokens_per_s_cst_sobolev": round(tokens / sob),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "model_gflops_per_s": round(flops / sob / 1e9, 1),
        "fraction_of_matmul_peak": round(flops / sob / peak, 3),
        "flop_count_tokens": flop_tokens,
        "query_ms_1000_rois": round(1e3 * query_latency(1000, 1, args.repeats * 5), 2),
        "query_ms_grid_128x128_p4": round(1e3 * query_latency(32 * 32, 16, args.repeats * 5), 2),
        "matmul_peak_gflops_bf16": round(peaks["bf16"] / 1e9, 1),
        "precision": precision_rows(windows, config_kw, args.repeats, variants, peaks),
        "skipped": skipped,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
