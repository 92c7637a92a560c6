"""Resource limits: memory bounded by configuration, a full disk, a read-only folder.

Peak memory is measured inside a fresh interpreter (``python -c``) as the kernel's
high-water mark of its own address space (``VmHWM``), reset between stages through
``/proc/self/clear_refs``; unlike ``ru_maxrss``, that never counts the parent's image
from before ``exec``. The recordings are Suite2p folders whose traces are written as
memory-mapped ``.npy`` files; the long one is 4× the short one, and the memory each
stage adds must not grow with it. ``soak`` runs a recording several times the asserted
bound (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cst_neuro.errors import OutputError
from cst_neuro.store import write_recording

from ._inputs import assert_clean_cli_error, cli_env

pytestmark = pytest.mark.timeout(600)
runner = CliRunner()

STAGES = textwrap.dedent(
    """
    import json, sys, numpy as np
    from pathlib import Path
    import torch, xarray, dask, zarr
    from cst_neuro.ingest import ingest
    from cst_neuro.reconstruct import Reconstructor, reconstruct
    from cst_neuro.store import open_store, write_recording
    from cst_neuro.train import FitConfig, fit

    torch.set_num_threads(1)
    dask.config.set(scheduler="threads", num_workers=2)

    def peak_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024

    def current_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    def stage(name, work):
        open("/proc/self/clear_refs", "w").write("5")  # peak := current
        before = current_mb()
        work()
        report[name] = peak_mb() - before

    source, root, budget = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    report = {}
    store, model = root / "rec.zarr", root / "m.pt"
    stage("ingest", lambda: ingest(source, store))
    config = FitConfig(
        window=16, batch_size=2, steps_per_epoch=3, max_epochs=1, val_fraction=0.0,
        n_collocation=8, memory_budget=budget,
        prior="none",
        model=dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, n_fourier=8),
    )
    stage("fit", lambda: fit(open_store(store), model, config=config, device="cpu"))
    def query():
        ds = open_store(store)
        rec = Reconstructor.from_checkpoint(model, ds, memory_budget=budget)
        times = np.linspace(0, float(ds["time"][-1]), 400)
        write_recording(reconstruct(rec, ds, times=times), root / "out.zarr")
    stage("reconstruct", query)
    print(json.dumps(report))
    """
)


def write_long_suite2p(folder: Path, n_rois: int, n_frames: int, *, seed: int = 0) -> int:
    """A Suite2p plane whose F/Fneu are memory-mapped .npy written in blocks; bytes on disk."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, level in (("F", 200.0), ("Fneu", 50.0)):
        out = np.lib.format.open_memmap(
            folder / f"{name}.npy", "w+", np.float32, (n_rois, n_frames)
        )
        for start in range(0, n_rois, 64):
            rows = min(64, n_rois - start)
            out[start : start + rows] = level + 10 * rng.random((rows, n_frames), np.float32)
        out.flush()
        del out
    side = int(np.ceil(np.sqrt(n_rois))) * 4
    stat = [
        {
            "ypix": np.array([4 * (i // (side // 4))]),
            "xpix": np.array([4 * (i % (side // 4))]),
            "lam": np.ones(1, np.float32),
            "med": [4 * (i // (side // 4)), 4 * (i % (side // 4))],
        }
        for i in range(n_rois)
    ]
    np.save(folder / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    np.save(folder / "iscell.npy", np.ones((n_rois, 2)))
    ops = {"fs": 30.0, "nplanes": 1, "Ly": side, "Lx": side, "neucoeff": 0.7}
    np.save(folder / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    return 2 * n_rois * n_frames * 4


def peak_memory(source: Path, root: Path, budget: int) -> dict[str, float]:
    """MB each stage added to the child's resident set at its peak."""
    root.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", STAGES, str(source), str(root), str(budget)],
        capture_output=True,
        text=True,
        timeout=550,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_recording_length(tmp_path: Path) -> None:
    """800 ROIs × 12,000 and × 48,000 frames.

    Both are several 16 MB read blocks long (3 and 10 blocks of F), so that in both every
    worker thread holds a full block: what is left to vary is the recording's length.
    """
    budget = 4 << 20  # a 4 MB memory budget: both recordings are streamed by fit
    sizes, peaks = {}, {}
    for n_frames in (12_000, 48_000):
        source = tmp_path / f"s2p-{n_frames}"
        sizes[n_frames] = write_long_suite2p(source, 800, n_frames) / 2**20
        peaks[n_frames] = peak_memory(source, tmp_path / f"run-{n_frames}", budget)
    print(f"\nRSS input MB {sizes}, peak MB added per stage {peaks}")
    short, long = peaks[12_000], peaks[48_000]
    growth = sizes[48_000] - sizes[12_000]
    for stage in short:
        # 4x the data may not cost 4x the memory: the measurement's own noise (64 MB,
        # allocator and torch start-up) plus a tenth of the extra data at most
        assert long[stage] - short[stage] < 64 + 0.1 * growth, (stage, sizes, peaks)


@pytest.mark.soak
def test_soak_recording_several_times_the_memory_bound(tmp_path: Path) -> None:
    """2,000 ROIs × 100,000 frames (1.6 GB of F and Fneu) under a 400 MB bound."""
    source = tmp_path / "s2p"
    size_mb = write_long_suite2p(source, 2000, 100_000) / 2**20
    peaks = peak_memory(source, tmp_path / "run", 64 << 20)
    print(f"\nSOAK input {size_mb:.0f} MB, peak MB added per stage {peaks}")
    assert size_mb > 3 * 400 and max(peaks.values()) < 400, peaks


# --- a full disk and a read-only folder --------------------------------------------------------


def _unshare_available() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not _unshare_available(), reason="needs unprivileged user+mount namespaces (unshare -Urm)"
)


def _in_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (tmpfs and read-only binds allowed)."""
    return subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
        cwd=tmp_path,
    )


def _snapshot(path: Path) -> list[tuple[str, bytes]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p), p.read_bytes()) for p in files]


@needs_unshare
@pytest.mark.parametrize("size", ["16k", "96k"])
@pytest.mark.parametrize("command", ["ingest", "fit", "reconstruct"])
def test_full_disk_is_a_clean_error(trained, valid_inputs, tmp_path, command, size) -> None:
    """A tiny tmpfs fills up: exit 2 naming the output and ENOSPC; nothing half-written."""
    disk = tmp_path / "disk"
    disk.mkdir()
    store, model, config = trained["store"], trained["model"], trained["config"]
    source = valid_inputs["suite2p-v0"].path
    output = disk / ("m.pt" if command == "fit" else "out.zarr")
    args, inputs = {
        "ingest": ([source, "-o", output], [source]),
        "fit": ([store, "-o", output, "--config", config], [store]),
        "reconstruct": ([model, store, "-o", output, "--upsample", "4"], [store, model]),
    }[command]
    before = [_snapshot(p) for p in inputs]
    cli = " ".join([sys.executable, "-m", "cst_neuro", command, *map(str, args)])
    script = f"mount -t tmpfs -o size={size} tmpfs {disk} && {cli}; echo rc=$?; ls -A {disk}"
    done = _in_namespace(script, tmp_path)
    rc_line = next(line for line in done.stdout.splitlines() if line.startswith("rc="))
    listing = done.stdout.split(rc_line, 1)[1].split()
    if rc_line != "rc=0":
        assert_clean_cli_error(int(rc_line[3:]), done.stdout, done.stderr, "No space left")
        # no output and no temporary; fit keeps its resumable progress file only
        assert all(name == ".m.pt.partial" for name in listing), listing
    else:
        assert listing == [output.name], listing
    assert [_snapshot(p) for p in inputs] == before, "an input changed"


@needs_unshare
def test_read_only_output_folder(trained, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    store = trained["store"]
    cli = f"{sys.executable} -m cst_neuro"
    script = (
        f"mount --bind {out} {out} && mount -o remount,bind,ro {out} && "
        f"{cli} reconstruct {trained['model']} {store} -o {out}/up.zarr --upsample 2; "
        f"echo rc=$?; {cli} fit {store} -o {out}/m.pt --config {trained['config']}; echo rc=$?"
    )
    done = _in_namespace(script, tmp_path)
    assert done.stdout.strip().splitlines() == ["rc=2", "rc=2"], done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("ro" in e for e in errors), done.stderr
    assert "Traceback" not in done.stderr
    assert list(out.iterdir()) == []


def test_disk_full_during_write_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC from the chunk writer (any platform): OutputError, nothing left behind."""
    import errno

    from zarr.storage import LocalStore

    from cst_neuro.schema import new_recording

    ds = new_recording(
        {"dff": (("time", "roi"), np.ones((50, 3), np.float32))},
        time=np.arange(50) / 10.0,
        fs=10.0,
        source_format="test",
        source_name="unit",
    )
    calls = {"n": 0}
    original = LocalStore.set

    async def fill_up(self, key, value):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", fill_up)
    with pytest.raises(OutputError, match="No space left on device"):
        write_recording(ds, tmp_path / "rec.zarr")
    assert list(tmp_path.iterdir()) == []
