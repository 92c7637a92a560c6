"""The metadata dictionaries of Suite2p output folders, filled in for a simulation.

Key sets and value types copy real outputs (``shared/data/suite2p``): Suite2p 0.10's
flat ``ops.npy`` (legacy layout) and Suite2p 1.1.0's ``db.npy``, ``settings.npy`` (nested),
``reg_outputs.npy``, ``detect_outputs.npy`` and ``ops.npy`` (new layout). Processing
parameters are Suite2p's defaults; the ones a reader needs (``fs``, ``nplanes``, ``Ly``,
``Lx``, ``nframes``, the neuropil coefficient, ``tau``, ``meanImg``, ``iplane``...) come
from the simulation.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUITE2P_V1_VERSION = "1.1.0"


@dataclass(frozen=True)
class PlaneInfo:
    """What the metadata of one plane folder needs to know."""

    folder: Path  # the suite2p folder (parent of plane*/)
    plane: int
    n_planes: int
    fs: float
    tau: float
    diameter: float
    neucoeff: float
    ly: int
    lx: int
    n_frames: int
    mean_image: np.ndarray  # (Ly, Lx) float64

    @property
    def save_path(self) -> str:
        return str(self.folder / f"plane{self.plane}")


def _now() -> datetime.datetime:
    """A fixed processing date, so that the same seed writes byte-identical folders."""
    return datetime.datetime(2023, 1, 31, 12, 0, tzinfo=datetime.UTC)


def _crop(info: PlaneInfo) -> tuple[list[int], list[int]]:
    return [0, info.ly], [0, info.lx]


def _enhanced(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)


def _ref_image(img: np.ndarray) -> tuple[np.ndarray, np.int16, np.int16]:
    ref = np.clip(np.round(img), -32768, 32767).astype(np.int16)
    return ref, np.int16(ref.min()), np.int16(ref.max())


# ---- Suite2p 0.x (legacy): one flat ops.npy per plane ----------------------------------------


def ops_v0(info: PlaneInfo) -> dict[str, Any]:
    """A flat Suite2p 0.10 ``ops`` dictionary (the 124 keys of a real single-plane run)."""
    ref, rmin, rmax = _ref_image(info.mean_image)
    yrange, xrange = _crop(info)
    t = info.n_frames
    save_path = info.save_path
    ops: dict[str, Any] = {
        "look_one_level_down": False, "fast_disk": save_path, "delete_bin": False,
        "mesoscan": False, "bruker": False, "h5py": [], "h5py_key": "data",
        "save_path0": str(info.folder.parent), "save_folder": info.folder.name,
        "subfolders": [], "move_bin": False, "nplanes": info.n_planes, "nchannels": 1,
        "functional_chan": 1, "tau": info.tau, "fs": info.fs, "force_sktiff": False,
        "frames_include": -1, "multiplane_parallel": False, "ignore_flyback": [],
        "preclassify": 0.0, "save_mat": False, "save_NWB": False, "combined": True,
        "aspect": np.float64(1.0), "do_bidiphase": False, "bidiphase": 0,
        "bidi_corrected": True, "do_registration": 1, "two_step_registration": False,
        "keep_movie_raw": False, "nimg_init": 300, "batch_size": 500, "maxregshift": 0.1,
        "align_by_chan": 1, "reg_tif": False, "reg_tif_chan2": False, "subpixel": 10,
        "smooth_sigma_time": 0, "smooth_sigma": 1.15, "th_badframes": 1.0,
        "norm_frames": True, "force_refImg": False, "pad_fft": False, "nonrigid": True,
        "block_size": (128, 128), "snr_thresh": 1.2, "maxregshiftNR": 5, "1Preg": False,
        "spatial_hp": 42, "spatial_hp_reg": 42, "spatial_hp_detect": 25, "pre_smooth": 0,
        "spatial_taper": 40, "roidetect": True, "spikedetect": True, "anatomical_only": 0,
        "cellprob_threshold": 0.0, "flow_threshold": 1.5, "sparse_mode": True,
        "diameter": round(info.diameter), "spatial_scale": 0, "connected": True,
        "nbinned": 5000, "max_iterations": 20, "threshold_scaling": 1.0,
        "max_overlap": 0.75, "high_pass": 100, "denoise": False, "soma_crop": True,
        "neuropil_extract": True, "inner_neuropil_radius": 2, "min_neuropil_pixels": 350,
        "lam_percentile": 50.0, "allow_overlap": False, "use_builtin_classifier": False,
        "classifier_path": 0, "chan2_thres": 0.65, "baseline": "maximin",
        "win_baseline": 60.0, "sig_baseline": 10.0, "prctile_baseline": 8.0,
        "neucoeff": info.neucoeff, "data_path": [str(info.folder.parent)],
        "input_format": "binary", "save_path": save_path,
        "ops_path": f"{save_path}/ops.npy", "reg_file": f"{save_path}/data.bin",
        "first_tiffs": np.array([True]), "frames_per_folder": np.array([t], np.int32),
        "filelist": [], "nframes": t, "frames_per_file": np.array([t], np.int64),
        "meanImg": info.mean_image.astype(np.float64), "Ly": info.ly, "Lx": info.lx,
        "yrange": yrange, "xrange": xrange, "date_proc": _now().replace(tzinfo=None),
        "refImg": ref, "rmin": rmin, "rmax": rmax,
        "yblock": [np.array([0, info.ly])], "xblock": [np.array([0, info.lx])],
        "nblocks": [1, 1], "NRsm": np.ones((1, 1)),
        "yoff": np.zeros(t, np.int32), "xoff": np.zeros(t, np.int32),
        "corrXY": np.ones(t, np.float32), "yoff1": np.zeros((t, 1), np.float32),
        "xoff1": np.zeros((t, 1), np.float32), "corrXY1": np.ones((t, 1), np.float32),
        "badframes": np.zeros(t, bool), "spatscale_pix": round(info.diameter),
        "meanImgE": _enhanced(info.mean_image), "Lyc": info.ly, "Lxc": info.lx,
        "max_proj": info.mean_image.astype(np.float32),
        "Vmax": np.zeros(0), "ihop": np.zeros(0), "Vsplit": np.zeros(0),
        "Vcorr": np.zeros((info.ly, info.lx)), "Vmap": [],
        "timing": {"registration": 0.0, "detection": 0.0, "extraction": 0.0,
                   "classification": 0.0, "deconvolution": 0.0, "total_plane_runtime": 0.0},
    }  # fmt: skip
    if info.n_planes > 1:
        ops["iplane"] = info.plane
    return ops


# ---- Suite2p 1.x: db.npy + settings.npy, and per-plane outputs ---------------------------


def settings_v1(info: PlaneInfo) -> dict[str, Any]:
    """Suite2p 1.1.0's nested ``settings`` (defaults, with fs, tau, diameter, neuropil)."""
    d = float(info.diameter)
    return {
        "torch_device": "cpu", "tau": info.tau, "fs": info.fs, "diameter": [d, d],
        "run": {"do_registration": 1, "do_regmetrics": False, "do_detection": True,
                "do_deconvolution": True, "multiplane_parallel": False},
        "io": {"combined": True, "save_mat": False, "save_NWB": False, "save_ops_orig": True,
               "delete_bin": False, "move_bin": False},
        "registration": {
            "align_by_chan2": False, "nimg_init": 400, "maxregshift": 0.1,
            "do_bidiphase": False, "bidiphase": 0.0, "batch_size": 100, "nonrigid": True,
            "maxregshiftNR": 5, "block_size": [128, 128], "smooth_sigma_time": 0,
            "smooth_sigma": 1.15, "spatial_taper": 3.45, "th_badframes": 1.0,
            "norm_frames": True, "snr_thresh": 1.2, "subpixel": 10,
            "two_step_registration": False, "reg_tif": False, "reg_tif_chan2": False,
            "upsample_meanImg": None,
        },
        "detection": {
            "algorithm": "sparsery", "denoise": False, "block_size": (64, 64), "nbins": 5000,
            "bin_size": None, "highpass_time": 100, "threshold_scaling": 1.0,
            "npix_norm_min": 0.0, "npix_norm_max": 100, "max_overlap": 0.75,
            "soma_crop": True, "chan2_threshold": 0.25, "cellpose_chan2": False,
            "sparsery_settings": {"highpass_neuropil": 25, "max_ROIs": 5000,
                                  "spatial_scale": 0, "active_percentile": 0.0},
            "sourcery_settings": {"connected": True, "max_iterations": 20,
                                  "smooth_masks": False},
            "cellpose_settings": {"cellpose_model": "cpsam", "img": "max_proj / meanImg",
                                  "highpass_spatial": 0, "flow_threshold": 0.4,
                                  "cellprob_threshold": 0.0, "params": None,
                                  "params_chan2": None},
        },
        "classification": {"classifier_path": None, "use_builtin_classifier": False,
                           "preclassify": 0.0},
        "extraction": {
            "snr_threshold": 0.0, "batch_size": 500, "neuropil_extract": True,
            "neuropil_coefficient": info.neucoeff, "inner_neuropil_radius": 2,
            "min_neuropil_pixels": 350, "lam_percentile": 50.0, "allow_overlap": False,
            "circular_neuropil": False,
        },
        "dcnv_preprocess": {"baseline": "maximin", "win_baseline": 60.0,
                            "sig_baseline": 10.0, "prctile_baseline": 8.0},
        "version": SUITE2P_V1_VERSION,
    }  # fmt: skip


def db_v1(info: PlaneInfo, *, plane_level: bool) -> dict[str, Any]:
    """Suite2p 1.1.0's ``db``: the run's inputs, plus per-plane fields in a plane folder."""
    folder = str(info.folder)
    db: dict[str, Any] = {
        "data_path": [str(info.folder.parent)], "look_one_level_down": False,
        "input_format": "binary", "keep_movie_raw": False, "nplanes": info.n_planes,
        "nrois": 1, "nchannels": 1, "swap_order": False, "functional_chan": 1,
        "lines": None, "dy": None, "dx": None, "ignore_flyback": None, "subfolders": None,
        "file_list": [], "save_path0": str(info.folder.parent), "fast_disk": folder,
        "save_folder": info.folder.name, "h5py_key": "data", "nwb_driver": "",
        "nwb_series": "", "force_sktiff": False, "bruker_bidirectional": False,
        "batch_size": 500, "first_files": np.array([True]),
    }  # fmt: skip
    if plane_level:
        save_path, t = info.save_path, info.n_frames
        db.update(
            fast_disk=save_path, save_path=save_path,
            settings_path=f"{save_path}/settings.npy", db_path=f"{save_path}/db.npy",
            reg_file=f"{save_path}/data.bin", iplane=np.int64(info.plane),
            Ly=info.ly, Lx=info.lx, nframes=t, frames_per_file=np.array([t], np.int64),
            frames_per_folder=np.array([t], np.int64),
            meanImg=info.mean_image.astype(np.float64),
        )  # fmt: skip
    return db


def reg_outputs_v1(info: PlaneInfo) -> dict[str, Any]:
    """Registration outputs of a plane (a simulation needs no motion correction)."""
    ref, rmin, rmax = _ref_image(info.mean_image)
    yrange, xrange = _crop(info)
    t = info.n_frames
    return {
        "refImg": ref, "rmin": rmin, "rmax": rmax,
        "yoff": np.zeros(t, np.int64), "xoff": np.zeros(t, np.int64),
        "corrXY": np.ones(t, np.float32), "yoff1": np.zeros((t, 1), np.float32),
        "xoff1": np.zeros((t, 1), np.float32), "corrXY1": np.ones((t, 1), np.float32),
        "meanImg": info.mean_image.astype(np.float32), "badframes": np.zeros(t, bool),
        "badframes0": np.zeros(t, bool), "yrange": yrange, "xrange": xrange,
        "bidiphase": 0.0, "meanImgE": _enhanced(info.mean_image),
    }  # fmt: skip


def detect_outputs_v1(info: PlaneInfo) -> dict[str, Any]:
    """Detection outputs of a plane (correlation maps stand in as the mean image)."""
    vmap = np.empty(1, dtype=object)
    vmap[0] = np.zeros((info.ly, info.lx))
    d = float(info.diameter)
    return {
        "Vmax": np.zeros(0), "ihop": np.zeros(0), "Vsplit": np.zeros(0),
        "Vcorr": np.zeros((info.ly, info.lx)), "Vmap": vmap,
        "spatscale_pix": round(d), "meanImg_crop": info.mean_image.astype(np.float32),
        "max_proj": info.mean_image.astype(np.float32), "diameter": np.array([d, d]),
    }  # fmt: skip


def ops_v1(info: PlaneInfo) -> dict[str, Any]:
    """Suite2p 1.1.0's per-plane ``ops``: db, settings and outputs merged, plus timings."""
    ops = db_v1(info, plane_level=True)
    ops.update(settings_v1(info))
    ops["diameter"] = np.array(ops["diameter"])
    ops["date_proc"] = _now()
    ops.update(reg_outputs_v1(info))
    ops.update(detect_outputs_v1(info))
    ops["plane_times"] = {"registration": 0.0, "detection": 0.0, "extraction": 0.0,
                          "deconvolution": 0.0, "classification": 0.0,
                          "total_plane_runtime": 0.0}  # fmt: skip
    return ops
