"""Simulated calcium-imaging recordings with an exact continuous-time ground truth.

The project's embedded data for tests, demos and evaluation: spatially structured
latent dynamics (travelling waves and shared oscillators, in continuous time) drive
inhomogeneous Poisson spikes; an indicator kernel turns them into calcium whose clean
ΔF/F is exact at any real time (``SimulatedRecording.clean_dff``); somata, neuropil,
shot and read noise give Suite2p-like ``F``, ``Fneu``, ``spks`` and movies, which the
writers stream to Suite2p folders (legacy and 1.x layouts), ``data.bin`` and ImageJ TIFF.

>>> from cst_neuro.simulate import SimulationConfig, simulate
>>> sim = simulate(SimulationConfig(n_rois=20, n_frames=300, seed=1))
>>> sim.recording()["F"].shape
(300, 20)
"""

from cst_neuro.simulate.config import INDICATORS, Indicator, SimulationConfig
from cst_neuro.simulate.recording import Block, SimulatedRecording, simulate
from cst_neuro.simulate.writers import write_simulation, write_suite2p, write_tiff

__all__ = [
    "INDICATORS",
    "Block",
    "Indicator",
    "SimulatedRecording",
    "SimulationConfig",
    "simulate",
    "write_simulation",
    "write_suite2p",
    "write_tiff",
]
