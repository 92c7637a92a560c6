"""Helpers for the model tests: tiny configs, token batches for the three layouts, differences."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cst_neuro.model.cst import CSTConfig
from cst_neuro.model.paper import PaperConfig

# the three token layouts the model serves: (value_dim, coord_dims, n_ids)
LAYOUTS = {
    "roi": (1, 3, 7),  # one token per (time, ROI): ΔF/F at (t, roi_y, roi_x), ROI id
    "patches": (16, 3, 0),  # 4×4 pixel patches at (t, y, x)
    "spirals": (2, 1, 0),  # the IE spirals: a 2-d state per time point
}


def _base(layout: str) -> dict[str, object]:
    value_dim, coord_dims, n_ids = LAYOUTS[layout]
    return dict(
        value_dim=value_dim,
        coord_dims=coord_dims,
        n_ids=n_ids,
        d_model=16,
        n_heads=2,
        n_layers=2,
        d_ff=32,
        dropout=0.0,
    )


def tiny_config(layout: str = "roi", **overrides: object) -> CSTConfig:
    """A small CST that runs in milliseconds."""
    base = _base(layout) | dict(
        n_decoder_layers=2, n_fourier=8, fourier_scale=1.5, n_latent_times=4, latents_per_time=2
    )
    return CSTConfig(**(base | overrides))  # type: ignore[arg-type]


def tiny_paper_config(layout: str = "roi", **overrides: object) -> PaperConfig:
    """A small network of the paper's architecture."""
    return PaperConfig(**(_base(layout) | overrides))  # type: ignore[arg-type]


def make_tokens(
    config: CSTConfig | PaperConfig,
    B: int,
    N: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Random (values, coords, ids) for a config: coordinates in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(B, N, config.value_dim, generator=g, dtype=dtype)
    coords = torch.rand(B, N, config.coord_dims, generator=g, dtype=dtype)
    ids = torch.randint(0, config.n_ids, (B, N), generator=g) if config.n_ids else None
    return values, coords, ids


def central_difference(f: Callable[[float], Tensor], order: int, h: float) -> Tensor:
    """d^order f/ds^order at 0 by central differences with Richardson extrapolation (O(h⁴))."""

    def stencil(h: float) -> Tensor:
        if order == 1:
            return (f(h) - f(-h)) / (2 * h)
        if order == 2:
            return (f(h) - 2 * f(0.0) + f(-h)) / h**2
        if order == 3:
            return (f(2 * h) - 2 * f(h) + 2 * f(-h) - f(-2 * h)) / (2 * h**3)
        raise ValueError(f"order {order} not implemented")

    return (4 * stencil(h / 2) - stencil(h)) / 3
