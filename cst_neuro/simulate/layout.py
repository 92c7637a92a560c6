"""Where the ROIs are: soma placement, footprints, neuropil blur and background images.

Somata are elliptical 2-D Gaussians placed by random sequential adsorption (no two
centres closer than a soma diameter; the distance shrinks, with a warning, when the
field of view is too crowded). A footprint keeps the pixels within two standard
deviations (weight >= e^-2 of the peak). ``weight`` is normalised to sum 1 per ROI, the
convention of Suite2p's extraction (``lam / lam.sum()``); ``shape`` keeps peak 1 for
rendering movies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.ndimage import gaussian_filter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Footprints:
    """Sparse footprints of N ROIs (pixel arrays grouped by ROI, ``indptr`` (N+1,))."""

    centre: np.ndarray  # (N, 2) true (y, x) centres, pixels
    radius: np.ndarray  # (N,) pixels
    aspect: np.ndarray  # (N,) major / minor axis
    indptr: np.ndarray  # (N+1,)
    roi: np.ndarray  # (P,) ROI index of each pixel
    y: np.ndarray  # (P,) int64
    x: np.ndarray  # (P,) int64
    shape: np.ndarray  # (P,) peak-1 Gaussian profile
    weight: np.ndarray  # (P,) shape / sum(shape) per ROI

    def pixels(self, r: int) -> slice:
        """Slice of the pixel arrays belonging to ROI ``r``."""
        return slice(int(self.indptr[r]), int(self.indptr[r + 1]))

    def centroid(self) -> np.ndarray:
        """(N, 2) weight-averaged pixel positions."""
        n = self.indptr.size - 1
        cy = np.bincount(self.roi, self.weight * self.y, minlength=n)
        cx = np.bincount(self.roi, self.weight * self.x, minlength=n)
        return np.column_stack([cy, cx])


def place_somata(rng: np.random.Generator, n: int, fov: tuple[int, int], radius: float):
    """(n, 2) centres at least ``2 * radius`` apart where possible (sequential adsorption).

    Random sequential adsorption jams near 55 % cover, so a field of view too small for
    ``n`` somata of this radius gets a smaller spacing (logged): somata then overlap.
    """
    ly, lx = fov
    margin = min(radius, (min(fov) - 1) / 4)
    area = (ly - 1 - 2 * margin) * (lx - 1 - 2 * margin)
    min_dist = min(2.0 * radius, 0.75 * np.sqrt(area / n))
    if min_dist < 2.0 * radius:
        log.warning("field of view %s too small for %d somata of radius %g px: spacing %.1f px",
                    fov, n, radius, min_dist)  # fmt: skip
    centres = np.empty((n, 2))
    placed, tries = 0, 0
    free = np.ones(fov, dtype=bool)
    while placed < n:
        batch = rng.uniform((margin, margin), (ly - 1 - margin, lx - 1 - margin), (512, 2))
        for cy, cx in batch:
            if free[round(cy), round(cx)]:
                centres[placed] = cy, cx
                _block_disc(free, cy, cx, min_dist)
                placed += 1
                if placed == n:
                    break
        tries += batch.shape[0]
        if placed < n and tries > 100 * n:
            min_dist *= 0.8
            log.warning("field of view %s too crowded for %d somata: spacing cut to %.1f px",
                        fov, n, min_dist)  # fmt: skip
            free[:] = True
            for cy, cx in centres[:placed]:
                _block_disc(free, cy, cx, min_dist)
            tries = 0
    return centres


def _block_disc(free: np.ndarray, cy: float, cx: float, r: float) -> None:
    y0, y1 = max(0, int(cy - r)), min(free.shape[0], int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r)), min(free.shape[1], int(cx + r) + 2)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    free[y0:y1, x0:x1] &= (yy - cy) ** 2 + (xx - cx) ** 2 >= r * r


def make_footprints(
    rng: np.random.Generator, centres: np.ndarray, fov: tuple[int, int], soma_radius: float
) -> Footprints:
    """Elliptical Gaussian somata of radius ~``soma_radius`` (+-20 %) around ``centres``."""
    n = int(centres.shape[0])
    radius = soma_radius * rng.uniform(0.8, 1.2, n)
    aspect = rng.uniform(1.0, 1.5, n)
    angle = rng.uniform(0, np.pi, n)
    parts: list[tuple[np.ndarray, ...]] = []
    for r in range(n):
        parts.append(_ellipse(centres[r], radius[r], aspect[r], angle[r], fov))
    counts = np.array([p[0].size for p in parts])
    y, x, shape = (np.concatenate([p[i] for p in parts]) for i in range(3))
    roi = np.repeat(np.arange(n), counts)
    weight = shape / np.bincount(roi, shape, minlength=n)[roi]
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return Footprints(centres, radius, aspect, indptr, roi, y, x, shape, weight)


def _ellipse(centre, radius, aspect, angle, fov):
    s_major, s_minor = radius * np.sqrt(aspect) / 2, radius / np.sqrt(aspect) / 2
    reach = int(np.ceil(2 * s_major)) + 1
    cy, cx = centre
    ys = np.arange(max(0, int(cy) - reach), min(fov[0], int(cy) + reach + 2))
    xs = np.arange(max(0, int(cx) - reach), min(fov[1], int(cx) + reach + 2))
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    dy, dx = yy - cy, xx - cx
    a = dy * np.cos(angle) + dx * np.sin(angle)
    b = -dy * np.sin(angle) + dx * np.cos(angle)
    q = (a / s_major) ** 2 + (b / s_minor) ** 2
    inside = q <= 4.0
    if not inside.any():  # a tiny soma still owns its centre pixel
        inside = q == q.min()
    return yy[inside].astype(np.int64), xx[inside].astype(np.int64), np.exp(-q[inside] / 2)


def neuropil_masks(
    fp: Footprints, fov: tuple[int, int], *, inner: int = 2, min_pixels: int = 350
) -> list[np.ndarray]:
    """Suite2p-like neuropil masks: flat pixel indices in an annulus around each soma.

    The annulus starts ``inner`` pixels outside the soma, excludes every soma's pixels
    and grows until it holds ``min_pixels`` pixels (or fills the field of view).
    """
    ly, lx = fov
    soma = np.zeros(fov, dtype=bool)
    soma[fp.y, fp.x] = True
    masks = []
    for r in range(fp.centre.shape[0]):
        cy, cx = fp.centre[r]
        r_in = fp.radius[r] * np.sqrt(fp.aspect[r]) + inner
        r_out = np.sqrt(r_in**2 + min_pixels / np.pi)
        while True:
            y0, y1 = max(0, int(cy - r_out)), min(ly, int(cy + r_out) + 2)
            x0, x1 = max(0, int(cx - r_out)), min(lx, int(cx + r_out) + 2)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            ok = (d2 >= r_in**2) & (d2 <= r_out**2) & ~soma[y0:y1, x0:x1]
            if ok.sum() >= min_pixels or r_out > max(fov):
                break
            r_out *= 1.25
        masks.append(np.sort(yy[ok] * lx + xx[ok]).astype(np.int64))
    return masks


def background_texture(rng: np.random.Generator, fov: tuple[int, int]) -> np.ndarray:
    """A smooth positive (Ly, Lx) texture with mean 1 (vessels and uneven labelling)."""
    noise = gaussian_filter(rng.standard_normal(fov), sigma=max(fov) / 32, mode="wrap")
    noise /= noise.std() or 1.0
    return np.clip(1.0 + 0.15 * noise, 0.3, None)


class NeuropilBlur:
    """Gaussian-weighted local average of ROI activity, per plane, via a coarse grid.

    ROI values are splatted bilinearly onto nodes spaced ``sigma / 2`` apart, blurred with
    separable Gaussians of width ``sigma`` (pixels), divided by the equally blurred ROI
    density (a soft floor of 5 % of its maximum keeps empty corners finite) and read back
    bilinearly at the ROIs or at every pixel. Cost per frame: O(N + nodes * sqrt(nodes)).
    """

    def __init__(self, centres: np.ndarray, plane: np.ndarray, fov, sigma: float, n_planes: int):
        self.fov, self.n_planes = fov, n_planes
        h = sigma / 2
        self.ny, self.nx = (int(np.ceil((size - 1) / h)) + 1 for size in fov)
        self.h = h
        nodes_y, nodes_x = np.arange(self.ny) * h, np.arange(self.nx) * h
        self.by, self.bx = _gaussian_matrix(nodes_y, sigma), _gaussian_matrix(nodes_x, sigma)
        wy, wx = _interp(centres[:, 0], h, self.ny), _interp(centres[:, 1], h, self.nx)
        g = self.ny * self.nx
        rows, cols, vals = [], [], []
        for (iy, fy), (ix, fx) in ((a, b) for a in wy for b in wx):
            rows.append(np.arange(centres.shape[0]))
            cols.append(plane * g + iy * self.nx + ix)
            vals.append(fy * fx)
        shape = (centres.shape[0], n_planes * g)
        self.splat = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
        )
        density = self._blur(np.asarray(self.splat.sum(axis=0)))  # (1, P, ny, nx)
        floor = 0.05 * density.reshape(n_planes, -1).max(axis=1)
        self.inv_density = 1.0 / (density + floor[None, :, None, None])

    def _blur(self, z: np.ndarray) -> np.ndarray:
        t = z.shape[0]
        z = np.ascontiguousarray(z).reshape(-1, self.nx) @ self.bx.T
        z = np.tensordot(self.by, z.reshape(t, self.n_planes, self.ny, self.nx), axes=(1, 2))
        return np.moveaxis(z, 0, 2)  # (T, P, ny, nx)

    def grid(self, values: np.ndarray) -> np.ndarray:
        """(T, planes, ny, nx) local averages of ``values`` (T, N)."""
        z = np.asarray(self.splat.T @ values.T).T
        return self._blur(z) * self.inv_density

    def at_rois(self, values: np.ndarray) -> np.ndarray:
        """(T, N) local average around each ROI (of the ROIs in its plane)."""
        z = self.grid(values).reshape(values.shape[0], -1)
        return np.asarray(self.splat @ z.T).T

    def at_pixels(self, grid: np.ndarray, plane: int) -> np.ndarray:
        """(T, Ly, Lx) bilinear upsampling of one plane of ``grid`` to every pixel."""
        my = _interp_matrix(self.fov[0], self.h, self.ny)
        mx = _interp_matrix(self.fov[1], self.h, self.nx)
        z = grid[:, plane] @ mx.T  # (T, ny, Lx)
        return np.moveaxis(np.tensordot(my, z, axes=(1, 1)), 0, 1)  # (T, Ly, Lx)


def _gaussian_matrix(nodes: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian weights between nodes, cut at 8 sigma (no denormals to slow BLAS down)."""
    d2 = (nodes[:, None] - nodes[None]) ** 2 / (2 * sigma**2)
    return np.where(d2 < 32.0, np.exp(-np.minimum(d2, 32.0)), 0.0)


def _interp(coord: np.ndarray, h: float, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bilinear weights of positions ``coord`` on nodes ``0, h, 2h, ...`` (n nodes)."""
    pos = np.clip(coord / h, 0, n - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
    frac = pos - lo
    hi = np.minimum(lo + 1, n - 1)
    return [(lo, 1.0 - frac), (hi, frac)]


def _interp_matrix(size: int, h: float, n: int) -> np.ndarray:
    m = np.zeros((size, n))
    rows = np.arange(size)
    for idx, w in _interp(rows.astype(np.float64), h, n):
        np.add.at(m, (rows, idx), w)
    return m
