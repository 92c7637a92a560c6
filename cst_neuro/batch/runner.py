"""Driving a batch on Dask distributed: one task per step per recording, one manifest.

``run_batch`` starts a ``LocalCluster`` (one single-threaded worker process per
recording slot, torch threads = CPUs / workers) or connects to an existing scheduler,
submits each recording's steps as a chain of futures (``ingest → fit → reconstruct`` and
``ingest → evaluate``), and collects them as they finish: the manifest is updated after
every step, a failing step fails only its own recording (the steps after it are not
run), and at the end ``summary.csv`` and ``summary.md`` list every recording. Only this
(client) process writes the manifest and the summaries; workers write only inside their
own recording's folder. See ``docs/cluster.md`` for SLURM/PBS and GPUs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cst_neuro.atomic import check_not_an_input
from cst_neuro.batch.manifest import LOCK_NAME, MANIFEST_NAME, BatchLock, Manifest
from cst_neuro.batch.report import SUMMARY_NAMES, BatchReport, RecordingResult
from cst_neuro.batch.settings import BatchSettings
from cst_neuro.batch.steps import (
    NEEDS,
    OMP_ENV,
    STEPS,
    Job,
    StepError,
    StepOutcome,
    closure,
    run_step,
)
from cst_neuro.errors import InputError, OutputError

log = logging.getLogger(__name__)

GPU_STEPS = ("fit", "reconstruct", "evaluate")


RESERVED = {MANIFEST_NAME, LOCK_NAME, *SUMMARY_NAMES}  # the batch's own files in OUTDIR


def recording_names(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """A unique, filesystem-safe name per input: its stem, with parent folders if needed.

    ``a/s1/suite2p`` and ``a/s2/suite2p`` become ``s1_suite2p`` and ``s2_suite2p``. Names
    are ASCII letters, digits, ``._-`` (never hidden, never one of the batch's own files);
    paths that still read alike (``a b`` and ``a_b``, look-alike letters) get a short
    hash of their full path, so each recording keeps its folder from run to run.
    """
    paths = [_absolute(p) for p in inputs]
    seen: dict[Path, int] = {}
    for i, p in enumerate(paths):
        if p in seen:
            raise InputError(inputs[i], f"given twice (also input {seen[p] + 1})")
        seen[p] = i
    depth = max(len(p.parts) for p in paths)
    for use_stem in (True, False):
        for k in range(1, depth + 1):
            names = [_name(p, k, use_stem) for p in paths]
            if len(set(names)) == len(names):
                return names
    names = [_name(p, 1, True) for p in paths]
    return [
        f"{n}-{_path_hash(p)}" if names.count(n) > 1 else n
        for n, p in zip(names, paths, strict=True)
    ]


def _path_hash(path: Path) -> str:
    return hashlib.blake2b(str(path).encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()


def _absolute(path: str | os.PathLike[str]) -> Path:
    """An absolute, normalised path; symbolic links stay unresolved.

    A link loop then fails as that recording's input, not as an error of the whole batch.
    """
    return Path(os.path.abspath(path))


def _name(path: Path, k: int, use_stem: bool) -> str:
    last = path.stem if use_stem and path.suffix else path.name
    parts = [*path.parent.parts[1:][-(k - 1) :], last] if k > 1 else [last]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts)).strip("_").lstrip(".")
    name = name or "recording"
    return f"{name}_recording" if name.lower() in {r.lower() for r in RESERVED} else name


def run_batch(
    inputs: Sequence[str | os.PathLike[str]],
    outdir: str | os.PathLike[str],
    *,
    steps: Sequence[str] = STEPS,
    settings: BatchSettings | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> BatchReport:
    """Run ``steps`` for every input on Dask; returns the report (its files are written).

    ``scheduler``: address of a running Dask scheduler (else a LocalCluster of
    ``workers`` processes). A rerun into the same ``outdir`` skips every step whose
    inputs and settings are unchanged and whose output exists.
    """
    settings = settings or BatchSettings()
    unknown = sorted(set(steps) - set(STEPS))
    if unknown or not steps:
        raise InputError(None, f"unknown step(s) {', '.join(unknown) or '(none given)'}; "
                               f"choose from {', '.join(STEPS)}")  # fmt: skip
    if not inputs:
        raise InputError(None, "no inputs given")
    names = recording_names(inputs)
    check_not_an_input(Path(outdir), inputs)  # OUTDIR is, holds or lies in a recording
    outdir = Path(outdir).resolve()
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(outdir, f"cannot create folder ({e.strerror or e})") from e
    with BatchLock(outdir):
        manifest = Manifest.load(outdir)
        with _client(scheduler, workers, len(names)) as (client, local_threads):
            jobs = [
                Job(
                    name=name,
                    source=str(_absolute(source)),
                    workdir=str(outdir / name),
                    settings=settings,
                    requested=tuple(steps),
                    recorded=manifest.recorded_keys(name),
                    torch_threads=settings.torch_threads or local_threads,
                )
                for name, source in zip(names, inputs, strict=True)
            ]
            results = _collect(client, jobs, closure(tuple(steps)), manifest, progress=progress)
        report = BatchReport(outdir, results)
        report.write()
    return report


@contextmanager
def _client(
    scheduler: str | None, workers: int | None, n_jobs: int
) -> Iterator[tuple[Any, int | None]]:
    """A Dask client, and the torch threads per task when the cluster is ours."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if workers is not None:
            log.warning("--workers applies to a local cluster; %s keeps its own", scheduler)
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise InputError(None, f"cannot reach the Dask scheduler at {scheduler} ({e})") from e
        with client:
            yield client, None
        return
    cpus = len(os.sched_getaffinity(0))
    n = workers or max(1, min(n_jobs, cpus))
    # Dask's own messages (task tracebacks included: every failure is in the summary) only
    # with --verbose.
    quiet = not log.isEnabledFor(logging.INFO)
    with (
        _quiet_dask(quiet),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL if quiet else logging.INFO,
            env={k: os.environ.get(k, v) for k, v in OMP_ENV.items()},  # before torch loads
        ) as cluster,
        Client(cluster) as client,
    ):
        log.info("Dask dashboard: %s", client.dashboard_link)
        yield client, max(1, cpus // n)


@contextmanager
def _quiet_dask(quiet: bool) -> Iterator[None]:
    """Keep the in-process scheduler's log records from reaching the root handler."""
    logger = logging.getLogger("distributed")
    old = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _collect(
    client: Any,
    jobs: list[Job],
    steps: tuple[str, ...],
    manifest: Manifest,
    *,
    progress: bool,
) -> list[RecordingResult]:
    """Submit every job's steps, then record each step as it finishes."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    results = {job.name: RecordingResult(job.name, job.source) for job in jobs}
    failures: dict[str, dict[str, BaseException | None]] = {job.name: {} for job in jobs}
    pending = {job.name: len(steps) for job in jobs}
    futures = {}
    for job in jobs:
        manifest.start(job.name, job.source)
        futures.update(_submit(client, job, steps))
    manifest.save()
    bar = tqdm(total=len(futures), desc="batch", unit="step", disable=not progress)
    with bar:
        for future in as_completed(list(futures)):
            name, step = futures[future]
            result = results[name]
            if future.status == "finished":
                _record(result, manifest, future.result())
            else:
                failures[name][step] = future.exception()
            pending[name] -= 1
            if pending[name] == 0:
                _fail(result, failures[name])
                manifest.end(name, status=result.status, error=result.error)
                log.info("%s: %s %s", name, result.status, result.error)
            manifest.save()
            bar.update(1)
            bar.set_postfix(failed=sum(bool(f) for f in failures.values()))
    return [results[job.name] for job in jobs]


def _submit(client: Any, job: Job, steps: tuple[str, ...]) -> dict[Any, tuple[str, str]]:
    """The job's steps as chained futures (a step's arguments are the futures it needs)."""
    made: dict[str, Any] = {}
    token = uuid.uuid4().hex[:8]
    for step in steps:
        made[step] = client.submit(
            run_step,
            step,
            job,
            *[made[n] for n in NEEDS[step]],
            key=f"{step}-{job.name}-{token}",
            pure=False,
            priority=STEPS.index(step),  # finish started recordings before ingesting new ones
            resources={"GPU": 1} if job.settings.gpu and step in GPU_STEPS else None,
        )
    return {future: (job.name, step) for step, future in made.items()}


def _record(result: RecordingResult, manifest: Manifest, outcome: StepOutcome) -> None:
    """Account for a finished step in the recording's result and the manifest."""
    step = outcome.step
    if outcome.ran:
        manifest.finish_step(
            result.name,
            step,
            key=outcome.key,
            duration_s=outcome.duration_s,
            metrics=outcome.metrics,
            input_hash=outcome.input_hash,
        )
        result.ran.append(step)
        result.duration_s += outcome.duration_s
        metrics = outcome.metrics
    else:
        result.skipped.append(step)
        metrics = (manifest.step(result.name, step) or {}).get("metrics", {})
    result.metrics.update({f"{step}.{k}": v for k, v in metrics.items()})
    for done in (result.ran, result.skipped):
        done.sort(key=STEPS.index)


def _fail(result: RecordingResult, failed: dict[str, BaseException | None]) -> None:
    """Record the steps that failed themselves (not because a step they need failed)."""
    for step in STEPS:
        if step in failed and not set(closure(NEEDS[step])) & set(failed):
            error = failed[step]
            if isinstance(error, StepError):
                result.errors.append(error.message)
                result.duration_s += error.duration_s
            else:  # the worker died or Dask gave up on the task
                text = " ".join(str(error).split())
                result.errors.append(f"{step}: {type(error).__name__}{': ' + text if text else ''}")
