"""Broken and hostile inputs for every reader, through ``cst-neuro ingest``.

Generated systematically: every file of every reader's genuine input is damaged in the
same ways (``DAMAGE``), then format-specific content cases (``CONTENT_CASES``) and
malicious pickles (``_payloads`` × ``PICKLED_FILES``) follow. Each case must end in
exit code 2 with one ``error:`` line naming the damaged file, no traceback, and no code
run; cases marked accepted must ingest cleanly. The per-reader counts in
docs/reliability.md are the sizes of these tables.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cst_neuro._cli.app import app
from cst_neuro.store import open_store

from ._inputs import BUILDERS, N_FRAMES, N_ROIS, TARGETS, Valid, assert_clean_cli_error, npy_bytes

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()


def ingest(valid: Valid, tmp: Path, source: Path | None = None) -> tuple[int, str, str, Path]:
    """``cst-neuro ingest`` in-process; (exit code, stdout, stderr, output path)."""
    out = tmp / "out.zarr"
    args = ["ingest", str(source or valid.path), "-o", str(out), *valid.cli_args()]
    result = runner.invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash: show it
    return result.exit_code, result.stdout, result.stderr, out


# --- the same damage to every file -------------------------------------------------------------

DAMAGE: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "zero-length": lambda b, rng: b"",
    "header-only": lambda b, rng: b[:16],
    "first-half": lambda b, rng: b[: len(b) // 2],
    "last-byte-cut": lambda b, rng: b[:-1],
    "text": lambda b, rng: b"sample,value\n1,2\n" * 20,
    "png-behind-the-name": lambda b, rng: b"\x89PNG\r\n\x1a\n" + bytes(200),
    "random-bytes": lambda b, rng: rng.integers(0, 256, len(b), dtype=np.uint8).tobytes(),
}

FILE_CASES = [
    (kind, target, damage) for kind in BUILDERS for target in TARGETS[kind] for damage in DAMAGE
]


@pytest.fixture(scope="module")
def reference(valid_inputs, tmp_path_factory):
    """``reference(kind)``: the store ingested from the intact input (cached)."""
    stores: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in stores:
            tmp = tmp_path_factory.mktemp(f"ref-{kind}")
            code, _, err, stores[kind] = ingest(valid_inputs[kind], tmp)
            assert code == 0, err
        return stores[kind]

    return get


def assert_error_or_intact(result, reference: Path, *names: str) -> None:
    """A clean error naming ``names``; or, where the damage missed the data (a trailing
    byte of a TIFF's last IFD, say), a store equal to the intact input's."""
    code, out, err, output = result
    if code == 0:
        got, want = open_store(output).load(), open_store(reference).load()
        got.attrs.pop("source_name"), want.attrs.pop("source_name")
        assert got.identical(want), "damaged input ingested with different data"
        return
    assert_clean_cli_error(code, out, err, *names)
    assert not output.exists()


@pytest.mark.parametrize(("kind", "target", "damage"), FILE_CASES)
def test_damaged_file_is_a_clean_error(fresh, reference, tmp_path, kind, target, damage) -> None:
    valid = fresh(kind)
    path = valid.root / target
    path.write_bytes(DAMAGE[damage](path.read_bytes(), np.random.default_rng(len(target))))
    assert_error_or_intact(ingest(valid, tmp_path), reference(kind), Path(target).name)


# --- wrong content behind a well-formed file ---------------------------------------------------

F = "suite2p/plane0/F.npy"


def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=array.dtype.hasobject)


def _npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A .npy whose header claims ``shape`` float32 but holds only 64 bytes."""
    header = npy_bytes(np.zeros((1, 1), np.float32)).replace(b"(1, 1)", repr(shape).encode())
    return header[: header.index(b"\n") + 1] + bytes(64)


def _plane_array(name: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / "suite2p/plane0" / name
        _save(path, make(np.load(path, allow_pickle=True)))

    return damage


def _stat(edit: Callable[[list], list]) -> Callable[[Path], None]:
    return _plane_array("stat.npy", lambda s: np.array(edit(list(s)), dtype=object))


def _ops(**changes) -> Callable[[Path], None]:
    return _plane_array("ops.npy", lambda o: np.array({**o.item(), **changes}, dtype=object))


def _with_movie(**changes) -> Callable[[Path], None]:
    """A plane with a genuine data.bin movie, then ops changed."""

    def damage(root: Path) -> None:
        ops = np.load(root / "suite2p/plane0/ops.npy", allow_pickle=True).item()
        frame_bytes = 2 * ops["Ly"] * ops["Lx"]
        (root / "suite2p/plane0/data.bin").write_bytes(bytes(N_FRAMES * frame_bytes))
        _ops(**changes)(root)

    return damage


def _write(name: str, content: Callable[[], bytes]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / name).write_bytes(content())

    return damage


def _h5(name: str, edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        with h5py.File(root / name, "r+") as f:
            edit(f)

    return damage


def _replace_h5(key: str, **dataset) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[key]
        f.create_dataset(key, **dataset)

    return edit


def _npz(name: str, **arrays) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        with np.load(root / name, allow_pickle=True) as old:
            kept = {k: old[k] for k in old.files}
        np.savez(root / name, **{**kept, **arrays})

    return damage


def _tiff(frames: Callable[[], np.ndarray], **kwargs) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        tifffile.imwrite(root / "movie.tif", frames(), **kwargs)

    return damage


def _zip_member_claiming(path: Path) -> None:
    """An .npz whose member's header claims 10^12 frames (data 64 bytes)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("dff.npy", _npy_claiming((10**12, N_ROIS)))
        zf.writestr("fs.npy", npy_bytes(np.array(10.0)))


OK = None  # an accepted case: ingests cleanly
SHORT = (N_ROIS, N_FRAMES - 3)
# (input kind, case, damage(root), file the error must name, or OK)
CONTENT_CASES: list[tuple[str, str, Callable[[Path], None], str | None]] = [
    ("suite2p-v0", "F-complex", _plane_array("F.npy", lambda a: a.astype(np.complex64)), "F.npy"),
    ("suite2p-v0", "F-strings", _plane_array("F.npy", lambda a: a.astype("U8")), "F.npy"),
    ("suite2p-v0", "F-objects", _plane_array("F.npy", lambda a: a.astype(object)), "F.npy"),
    ("suite2p-v0", "F-3d", _plane_array("F.npy", lambda a: a[None]), "F.npy"),
    ("suite2p-v0", "F-no-frames", _plane_array("F.npy", lambda a: a[:, :0]), "F.npy"),
    ("suite2p-v0", "F-no-rois", _plane_array("F.npy", lambda a: a[:0]), "F.npy"),
    ("suite2p-v0", "F-claims-4TB", _write(F, lambda: _npy_claiming((N_ROIS, 2 * 10**11))), "F.npy"),
    (
        "suite2p-v0",
        "F-inf-and-nan",
        _plane_array("F.npy", lambda a: np.where(a > a.mean(), np.inf, np.nan)),
        OK,
    ),
    ("suite2p-v0", "F-float16-bigendian", _plane_array("F.npy", lambda a: a.astype(">f2")), OK),
    ("suite2p-v0", "F-int16", _plane_array("F.npy", lambda a: a.astype(np.int16)), OK),
    ("suite2p-v0", "Fneu-shorter", _plane_array("Fneu.npy", lambda a: a[:, :-3]), "Fneu.npy"),
    ("suite2p-v0", "spks-fewer-rois", _plane_array("spks.npy", lambda a: a[:-1]), "spks.npy"),
    ("suite2p-v0", "iscell-fewer-rois", _plane_array("iscell.npy", lambda a: a[:-1]), "iscell.npy"),
    ("suite2p-v0", "iscell-3d", _plane_array("iscell.npy", lambda a: a[None]), "iscell.npy"),
    (
        "suite2p-v0",
        "iscell-strings",
        _plane_array("iscell.npy", lambda a: a.astype("U3")),
        "iscell.npy",
    ),
    ("suite2p-v0", "stat-fewer-rois", _stat(lambda s: s[:-1]), "stat.npy"),
    ("suite2p-v0", "stat-not-dicts", _stat(lambda s: list(range(len(s)))), "stat.npy"),
    ("suite2p-v0", "stat-no-ypix", _stat(lambda s: [{**r, "ypix": None} for r in s]), "stat.npy"),
    (
        "suite2p-v0",
        "stat-pixels-outside",
        _stat(lambda s: [{**r, "xpix": r["xpix"] + 10**6} for r in s]),
        "stat.npy",
    ),
    (
        "suite2p-v0",
        "stat-negative-pixels",
        _stat(lambda s: [{**r, "ypix": -r["ypix"] - 1} for r in s]),
        "stat.npy",
    ),
    (
        "suite2p-v0",
        "stat-lam-nan",
        _stat(lambda s: [{**r, "lam": r["lam"] * np.nan} for r in s]),
        "stat.npy",
    ),
    (
        "suite2p-v0",
        "stat-lengths-differ",
        _stat(lambda s: [{**r, "lam": r["lam"][:-1]} for r in s]),
        "stat.npy",
    ),
    (
        "suite2p-v0",
        "stat-med-text",
        _stat(lambda s: [{**r, "med": "centre"} for r in s]),
        "stat.npy",
    ),
    (
        "suite2p-v0",
        "stat-a-dict",
        _plane_array("stat.npy", lambda s: np.array({"a": 1}, dtype=object)),
        "stat.npy",
    ),
    ("suite2p-v0", "ops-fs-nan", _ops(fs=float("nan")), "ops.npy"),
    ("suite2p-v0", "ops-fs-negative", _ops(fs=-30.0), "ops.npy"),
    ("suite2p-v0", "ops-fs-text", _ops(fs="thirty"), "ops.npy"),
    ("suite2p-v0", "ops-Ly-huge-float", _ops(Ly=1e300), "ops.npy"),
    ("suite2p-v0", "ops-Ly-huge-with-movie", _with_movie(Ly=10**30), "ops.npy"),
    ("suite2p-v0", "ops-Lx-zero-with-movie", _with_movie(Lx=0), "ops.npy"),
    ("suite2p-v0", "ops-nplanes-negative", _ops(nplanes=-2), "ops.npy"),
    ("suite2p-v0", "ops-neucoeff-inf", _ops(neucoeff=float("inf")), "ops.npy"),
    (
        "suite2p-v0",
        "ops-a-list",
        _plane_array("ops.npy", lambda o: np.array([1, 2], dtype=object)),
        "ops.npy",
    ),
    (
        "suite2p-v0",
        "data-bin-short",
        _write("suite2p/plane0/data.bin", lambda: bytes(1000)),
        "data.bin",
    ),
    (
        "traces-npy",
        "3d",
        _write("dff.npy", lambda: npy_bytes(np.zeros((4, 4, 4), np.float32))),
        "dff.npy",
    ),
    (
        "traces-npy",
        "complex",
        _write("dff.npy", lambda: npy_bytes(np.zeros((8, 2), np.complex64))),
        "dff.npy",
    ),
    (
        "traces-npy",
        "strings",
        _write("dff.npy", lambda: npy_bytes(np.array([["a", "b"]] * 8))),
        "dff.npy",
    ),
    (
        "traces-npy",
        "no-frames",
        _write("dff.npy", lambda: npy_bytes(np.zeros((0, 3), np.float32))),
        "dff.npy",
    ),
    ("traces-npy", "claims-4TB", _write("dff.npy", lambda: _npy_claiming((10**12, 1))), "dff.npy"),
    (
        "traces-npy",
        "all-nan",
        _write("dff.npy", lambda: npy_bytes(np.full((N_FRAMES, 2), np.nan, np.float32))),
        OK,
    ),
    (
        "traces-npy",
        "huge-values",
        _write("dff.npy", lambda: npy_bytes(np.full((N_FRAMES, 2), 3e38, np.float32))),
        OK,
    ),
    (
        "traces-npz",
        "member-claims-4TB",
        lambda root: _zip_member_claiming(root / "dff.npz"),
        "dff.npz",
    ),
    (
        "traces-npz",
        "no-numeric-array",
        _npz("dff.npz", dff=np.array(["a", "b"]), fs=np.array("x")),
        "dff.npz",
    ),
    ("traces-npz", "fs-zero", _npz("dff.npz", fs=np.array(0.0)), "dff.npz"),
    (
        "traces-npz",
        "timestamps-decreasing",
        _npz("dff.npz", time=np.arange(N_FRAMES)[::-1] / 10.0),
        "dff.npz",
    ),
    (
        "traces-npz",
        "timestamps-wrong-length",
        _npz("dff.npz", time=np.arange(N_FRAMES + 7) / 10.0),
        "dff.npz",
    ),
    (
        "traces-h5",
        "claims-10^12-frames",
        _h5(
            "dff.h5", _replace_h5("dff", shape=(10**12, N_ROIS), dtype="f4", chunks=(1000, N_ROIS))
        ),
        "dff.h5",
    ),
    (
        "traces-h5",
        "unwritten-contiguous",
        _h5("dff.h5", _replace_h5("dff", shape=(10**6, N_ROIS), dtype="f4")),
        "dff.h5",
    ),
    (
        "traces-h5",
        "strings",
        _h5("dff.h5", _replace_h5("dff", data=np.array([b"a", b"b"] * 8).reshape(8, 2))),
        "dff.h5",
    ),
    (
        "traces-h5",
        "fs-negative",
        _h5("dff.h5", lambda f: f.attrs.__setitem__("fs", -1.0)),
        "dff.h5",
    ),
    (
        "traces-mat5",
        "cell-array",
        _write("dff.mat", lambda: _mat({"dff": np.array([np.ones(3), "x"], dtype=object)})),
        "dff.mat",
    ),
    (
        "traces-mat5",
        "struct",
        _write("dff.mat", lambda: _mat({"dff": {"a": np.ones(3)}})),
        "dff.mat",
    ),
    (
        "traces-mat5",
        "unknown-element-type",
        _write("dff.mat", lambda: _mat_with_type(0)),
        "dff.mat",
    ),
    (
        "traces-mat5",
        "matrix-in-numeric-slot",
        _write("dff.mat", lambda: _mat_with_type(14)),
        "dff.mat",
    ),
    (
        "traces-mat5",
        "type-beyond-table",
        _write("dff.mat", lambda: _mat_with_type(4242)),
        "dff.mat",
    ),
    ("movie-tiff", "single-image", _tiff(lambda: np.zeros((16, 16), np.uint16)), "movie.tif"),
    (
        "movie-tiff",
        "rgb",
        _tiff(lambda: np.zeros((4, 16, 16, 3), np.uint8), photometric="rgb"),
        "movie.tif",
    ),
    (
        "movie-tiff",
        "channels",
        _tiff(lambda: np.zeros((4, 2, 16, 16), np.uint16), imagej=True, metadata={"axes": "TCYX"}),
        "movie.tif",
    ),
    ("movie-tiff", "complex", _tiff(lambda: np.zeros((4, 16, 16), np.complex64)), "movie.tif"),
    ("movie-tiff", "float-nan-inf", _tiff(lambda: np.full((8, 16, 16), np.inf, np.float32)), OK),
    (
        "caiman-npz",
        "A-C-disagree",
        _npz("cnmf.npz", C=np.zeros((N_ROIS + 2, N_FRAMES))),
        "cnmf.npz",
    ),
    ("caiman-npz", "dims-wrong", _npz("cnmf.npz", dims=np.array([7, 9])), "cnmf.npz"),
    ("caiman-npz", "C-text", _npz("cnmf.npz", C=np.array(["x"] * 4)), "cnmf.npz"),
    (
        "caiman-npz",
        "idx-out-of-range",
        _npz("cnmf.npz", idx_components=np.array([0, 99])),
        "cnmf.npz",
    ),
    (
        "caiman-hdf5",
        "C-claims-10^12-frames",
        _h5(
            "cnmf.hdf5",
            _replace_h5("estimates/C", shape=(N_ROIS, 10**12), dtype="f8", chunks=(N_ROIS, 1000)),
        ),
        "cnmf.hdf5",
    ),
    (
        "caiman-hdf5",
        "A-shape-garbage",
        _h5("cnmf.hdf5", _replace_h5("estimates/A/shape", data=np.array([-1, 3]))),
        "cnmf.hdf5",
    ),
    ("nwb", "data-claims-10^12-frames", _h5("rec.nwb", lambda f: _nwb_claim(f)), "rec.nwb"),
    ("nwb", "rois-out-of-range", _h5("rec.nwb", lambda f: _nwb_rois(f)), "rec.nwb"),
]


def _mat(variables: dict) -> bytes:
    import io

    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    return buf.getvalue()


def _mat_with_type(code: int) -> bytes:
    """A MAT v5 file whose numeric data element carries type ``code`` (scipy would crash)."""
    data = bytearray(_mat({"dff": np.arange(8.0)}))
    tag = (9).to_bytes(4, "little") + (64).to_bytes(4, "little")  # miDOUBLE, 8 doubles
    at = data.index(tag)
    data[at : at + 4] = code.to_bytes(4, "little")
    return bytes(data)


def _nwb_series(f: h5py.File) -> str:
    return "processing/ophys/DfOverF/dff"


def _nwb_claim(f: h5py.File) -> None:
    key = f"{_nwb_series(f)}/data"
    attrs = dict(f[key].attrs)
    del f[key]
    f.create_dataset(key, shape=(10**12, N_ROIS), dtype="f4", chunks=(1000, N_ROIS))
    f[key].attrs.update(attrs)


def _nwb_rois(f: h5py.File) -> None:
    key = f"{_nwb_series(f)}/rois"
    attrs = dict(f[key].attrs)
    del f[key]
    f.create_dataset(key, data=np.array([0, 1, 2, 3, 10**6]))
    f[key].attrs.update(attrs)


@pytest.mark.parametrize(
    ("kind", "damage", "names"),
    [pytest.param(k, d, n, id=f"{k}:{c}") for k, c, d, n in CONTENT_CASES],
)
def test_wrong_content(fresh, tmp_path, kind, damage, names) -> None:
    valid = fresh(kind)
    damage(valid.root)
    code, out, err, output = ingest(valid, tmp_path)
    if names is OK:
        assert code == 0, err
        assert open_store(output).sizes["time"] > 0
    else:
        assert_clean_cli_error(code, out, err, names)
        assert not output.exists()


# --- malicious pickles: nothing may run --------------------------------------------------------


class _Call:
    """Pickles as a call of ``func(*args)`` (what an attacker's file contains)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that, unpickled naively, would create ``marker``."""
    import builtins
    import os
    import subprocess

    touch = f"touch {marker}"
    write = f"open({str(marker)!r}, 'w').close()"
    found = {
        f"os.system-protocol-{p}": pickle.dumps(_Call(os.system, touch), protocol=p)
        for p in range(6)
    }
    found["builtins.exec"] = pickle.dumps(_Call(builtins.exec, write))
    found["builtins.eval"] = pickle.dumps(_Call(builtins.eval, write))
    found["subprocess.call"] = pickle.dumps(_Call(subprocess.call, ["touch", str(marker)]))
    found["inside-a-dict"] = pickle.dumps({"fs": 30.0, "x": _Call(os.system, touch)})
    found["inside-a-list-of-rois"] = pickle.dumps([{"ypix": _Call(os.system, touch)}])
    found["INST-opcode"] = f"(S'{touch}'\nios\nsystem\n.".encode()
    found["OBJ-opcode"] = f"(cos\nsystem\nS'{touch}'\no.".encode()
    found["persistent-id"] = b"P1\n."
    found["numpy-load-of-a-pickle"] = pickle.dumps(_Call(np.load, str(marker), None, True))
    return found


def _object_npy(pickled: bytes) -> bytes:
    """A .npy of dtype object (what Suite2p writes for stat/ops) holding ``pickled``."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buf.getvalue() + pickled


PICKLED_FILES = [
    ("suite2p-v0", "suite2p/plane0/stat.npy"),
    ("suite2p-v0", "suite2p/plane0/ops.npy"),
    ("suite2p-v0", "suite2p/plane0/iscell.npy"),
    ("suite2p-v1", "suite2p/plane0/settings.npy"),
    ("suite2p-v1", "suite2p/plane0/db.npy"),
    ("suite2p-v1", "suite2p/db.npy"),
    ("suite2p-v1", "suite2p/plane0/reg_outputs.npy"),
    ("caiman-npz", "cnmf.npz"),
    ("traces-npz", "dff.npz"),
]
PAYLOAD_NAMES = sorted(_payloads(Path("x")))


@pytest.mark.parametrize(("kind", "target"), PICKLED_FILES)
@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
def test_malicious_pickle_runs_nothing(fresh, tmp_path, kind, target, payload) -> None:
    valid = fresh(kind)
    marker = tmp_path / "pwned"
    pickled = _object_npy(_payloads(marker)[payload])
    path = valid.root / target
    if path.suffix == ".npz":
        member = "A" if kind == "caiman-npz" else "dff"
        with np.load(path, allow_pickle=True) as old:
            kept = {k: old[k] for k in old.files if k != member}
        np.savez(path, **kept)
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(f"{member}.npy", pickled)
    else:
        path.write_bytes(pickled)
    code, out, err, output = ingest(valid, tmp_path)
    assert not marker.exists(), "a pickle ran code"
    assert_clean_cli_error(code, out, err, Path(target).name)
    assert not output.exists()
