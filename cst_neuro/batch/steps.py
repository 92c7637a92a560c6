"""The steps of a batch, run on Dask workers: ingest, fit, reconstruct, evaluate.

Each step of one recording is one Dask task. ``run_step`` computes the step's key from
the keys of the steps it needs (``NEEDS``) and its settings, skips the step when the
manifest already holds that key and the output exists, and otherwise runs it and returns
a ``StepOutcome``. Outputs go to ``OUTDIR/<recording>/`` (``OUTPUTS``) and are written
atomically by the library (stores and checkpoints: temporary sibling, then rename), so
concurrent workers and interrupted runs never leave a half-written output that looks
valid. Failures are raised as ``StepError``: a plain, picklable message naming the step.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cst_neuro.atomic import write_text
from cst_neuro.batch.manifest import hash_input, step_key
from cst_neuro.batch.settings import BatchSettings
from cst_neuro.errors import CSTNeuroError

log = logging.getLogger(__name__)

STEPS = ("ingest", "fit", "reconstruct", "evaluate")
NEEDS: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "fit": ("ingest",),
    "reconstruct": ("fit",),
    "evaluate": ("ingest",),
}
OUTPUTS = {
    "ingest": "recording.zarr",
    "fit": "model.pt",
    "reconstruct": "reconstruction.zarr",
    "evaluate": "evaluation",
}
# OpenMP threads that busy-wait between parallel regions slow training several-fold when
# other processes share the cores (measured: 5x on 2 shared cores); sleeping costs little.
OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
_FIT_KEY = ".fit-key"  # the key of the fit whose progress checkpoint sits beside model.pt


class StepError(CSTNeuroError):
    """A step failed: ``message`` says which and why; ``duration_s`` how long it ran."""

    def __init__(self, message: str, duration_s: float = 0.0) -> None:
        super().__init__(message, duration_s)
        self.message = message
        self.duration_s = duration_s

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Job:
    """One recording of a batch, as a worker sees it."""

    name: str
    source: str
    workdir: str
    settings: BatchSettings
    requested: tuple[str, ...]  # steps to run when out of date; others must be up to date
    recorded: dict[str, str] = field(default_factory=dict)  # step -> key from the manifest
    torch_threads: int | None = None

    @property
    def store(self) -> Path:
        """The recording's store: the input itself when it is a store, else the ingested one."""
        from cst_neuro.store import is_store

        source = Path(self.source)
        return source if is_store(source) else Path(self.workdir) / OUTPUTS["ingest"]

    def output(self, step: str) -> Path:
        return self.store if step == "ingest" else Path(self.workdir) / OUTPUTS[step]


@dataclass(frozen=True)
class StepOutcome:
    """What a step did: its key, whether it ran (else it was up to date), time, metrics."""

    step: str
    key: str
    ran: bool
    duration_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    input_hash: str | None = None


def closure(steps: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The steps plus every step they need, in pipeline order."""
    want: set[str] = set()
    todo = list(steps)
    while todo:
        step = todo.pop()
        if step not in want:
            want.add(step)
            todo += NEEDS[step]
    return tuple(s for s in STEPS if s in want)


def run_step(step: str, job: Job, *upstream: StepOutcome) -> StepOutcome:
    """Run (or skip, when up to date) one step of one recording; the Dask task."""
    start = time.perf_counter()
    try:
        input_hash = None
        if step == "ingest":
            input_hash = hash_input(job.source, mode=job.settings.hash)
            parents = [input_hash]
        else:
            parents = [u.key for u in upstream]
        key = step_key(step, parents, job.settings.for_step(step))
        if job.recorded.get(step) == key and job.output(step).exists():
            return StepOutcome(step, key, ran=False, input_hash=input_hash)
        if step not in job.requested:
            raise StepError(
                f"{step}: its output is missing or out of date and {step} is not in --steps; "
                f"add it to --steps"
            )
        _limit_threads(job.torch_threads)
        Path(job.workdir).mkdir(parents=True, exist_ok=True)
        with _local_dask():
            metrics = _RUNNERS[step](job, key)
        return StepOutcome(step, key, True, time.perf_counter() - start, metrics, input_hash)
    except StepError as e:
        raise StepError(e.message, time.perf_counter() - start) from None
    except CSTNeuroError as e:
        raise StepError(f"{step}: {e}", time.perf_counter() - start) from None
    except Exception as e:  # a bug or a library's own error: still isolate this recording
        log.error("%s of %s failed:\n%s", step, job.name, traceback.format_exc())
        raise StepError(f"{step}: {type(e).__name__}: {e}", time.perf_counter() - start) from None


def _local_dask() -> Any:
    """Dask computations inside a step (streamed writes) run in this process's threads.

    On a Dask worker, ``compute()`` would otherwise send them to the cluster, which means
    pickling the model and the lazy Recording with it; a step is one unit of work.
    """
    import dask

    return dask.config.set(scheduler="threads")


def _limit_threads(n: int | None) -> None:
    """Set torch's threads for this task; None keeps the process's default.

    Dask starts worker processes with OMP_NUM_THREADS=1 (its default), so by default a
    task on a worker of an existing cluster uses one thread per worker thread.
    """
    if n is not None:
        import torch

        torch.set_num_threads(n)


def ingest_step(job: Job, key: str) -> dict[str, Any]:
    """Input → zarr store with ΔF/F (a store given as input is checked and used as it is)."""
    from cst_neuro.ingest import ingest
    from cst_neuro.store import is_store, open_store

    if not is_store(Path(job.source)):
        ingest(job.source, job.store, overwrite=True, **job.settings.ingest)
    ds = open_store(job.store)
    return {"rois": ds.sizes.get("roi", 0), "frames": ds.sizes["time"], "fs": float(ds.attrs["fs"])}


def fit_step(job: Job, key: str) -> dict[str, Any]:
    """Train a model; an interrupted fit with the same key resumes exactly where it stopped."""
    from cst_neuro.store import open_store
    from cst_neuro.train import fit, partial_path

    output = job.output("fit")
    marker = Path(job.workdir) / _FIT_KEY
    resume = partial_path(output).exists() and marker.exists() and marker.read_text() == key
    if not resume:
        partial_path(output).unlink(missing_ok=True)
        write_text(marker, key)
    result = fit(
        open_store(job.store),
        output,
        config=job.settings.fit,
        device=job.settings.device,
        resume=resume,
    )
    marker.unlink(missing_ok=True)
    return {"epochs": result.epochs, "best_val": result.best_val, "stopped": result.stopped}


def reconstruct_step(job: Job, key: str) -> dict[str, Any]:
    """The model's predictions at K× the frame rate, as a zarr store."""
    from cst_neuro.device import resolve_device
    from cst_neuro.reconstruct import Reconstructor, reconstruct
    from cst_neuro.store import open_store, write_recording

    ds = open_store(job.store)
    model = Reconstructor.from_checkpoint(
        job.output("fit"), ds, device=resolve_device(job.settings.device)
    )
    out = reconstruct(model, ds, upsample=job.settings.upsample)
    write_recording(out, job.output("reconstruct"), overwrite=True)
    return {"times": out.sizes["time"]}


def evaluate_step(job: Job, key: str) -> dict[str, Any]:
    """Held-out evaluation of CST and the baselines (``cst_neuro.evaluate``); report folder."""
    from cst_neuro.evaluate import evaluate_store

    ev = job.settings.evaluate
    report = evaluate_store(
        job.store,
        task=ev.task,
        factor=ev.factor,
        methods=None if ev.methods is None else list(ev.methods),
        seeds=ev.seeds,
        max_minutes=ev.max_minutes,
        fraction=ev.fraction,
        block=ev.block,
        horizon=ev.horizon,
        fit_settings=ev.fit,
        out_dir=job.output("evaluate"),  # written atomically by the report
    )
    return {k: float(v) for k, v in report.summary().items()}


_RUNNERS = {
    "ingest": ingest_step,
    "fit": fit_step,
    "reconstruct": reconstruct_step,
    "evaluate": evaluate_step,
}
