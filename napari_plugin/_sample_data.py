"""napari sample-data contribution: a small simulated recording with its movie.

Follows the npe2 sample-data contract
(https://napari.org/stable/plugins/building_a_plugin/guides.html#sample-data): a function
returning LayerData tuples, here built by ``cst_neuro.layers`` from a
``cst_neuro.simulate`` recording (footprints, mean image, ΔF/F and the rendered movie).
"""

from __future__ import annotations

import xarray as xr

from cst_neuro.layers import LayerData, recording_layers

N_ROIS = 60
N_FRAMES = 600
FOV = (128, 128)  # the movie is 600 x 128 x 128 float32, about 39 MB


def simulated_recording(
    *, n_rois: int = N_ROIS, n_frames: int = N_FRAMES, seed: int = 0
) -> xr.Dataset:
    """A simulated Recording with ΔF/F and ``movie(time, y, x)`` rendered by the simulator."""
    from cst_neuro.preprocess import compute_dff
    from cst_neuro.simulate import SimulationConfig, simulate

    sim = simulate(SimulationConfig(n_rois=n_rois, n_frames=n_frames, fov=FOV, seed=seed))
    ds = compute_dff(sim.recording())
    return ds.assign(movie=(("time", "y", "x"), sim.movie()))


def make_sample_data() -> list[LayerData]:
    """Layers of ``simulated_recording()``: mean image, movie and ROI labels."""
    return recording_layers(simulated_recording())
