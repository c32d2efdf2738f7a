"""Pixel grids in mm and ROI statistics per sphere.

Pixel (row i, column j) of an (ny, nx) map sits at x = (j - nx//2) * dx_mm, y = (i - ny//2) * dy_mm, the
convention of mrf_core.sim.phantoms, so detected positions compare directly with a simulation's placement.
An ROI is a disc around a sphere centre, eroded (smaller than the sphere by `erosion_mm`) so that
partial-volume voxels at the sphere wall and a slightly misplaced centre do not bias the statistics.
Statistics use the mapped (finite) voxels; unmapped ones are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrf_core.qa import QAError


@dataclass(frozen=True)
class PixelGrid:
    """An (ny, nx) map's pixel spacing in mm (rows: dy_mm, columns: dx_mm)."""

    ny: int
    nx: int
    dy_mm: float
    dx_mm: float

    @classmethod
    def from_fov(cls, shape: tuple[int, int], fov_mm: tuple[float, float]) -> PixelGrid:
        """From a map's shape (ny, nx) and field of view (x, y) in mm, as ISMRMRD images give it."""
        ny, nx = (int(v) for v in shape)
        fov_x, fov_y = (float(v) for v in fov_mm[:2])
        if not (fov_x > 0 and fov_y > 0 and math.isfinite(fov_x) and math.isfinite(fov_y)):
            raise QAError(f"the maps have no usable field of view ({fov_x:g} x {fov_y:g} mm): pixel size unknown")
        return cls(ny, nx, fov_y / ny, fov_x / nx)

    @property
    def shape(self) -> tuple[int, int]:
        return self.ny, self.nx

    @property
    def pixel_area_mm2(self) -> float:
        return self.dy_mm * self.dx_mm

    def coords_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of every pixel centre, each (ny, nx)."""
        x = (np.arange(self.nx) - self.nx // 2) * self.dx_mm
        y = (np.arange(self.ny) - self.ny // 2) * self.dy_mm
        return np.meshgrid(x, y, indexing="xy")

    def to_pixel(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """(row, column) of a position in mm (fractional)."""
        return y_mm / self.dy_mm + self.ny // 2, x_mm / self.dx_mm + self.nx // 2

    def disc(self, centre_mm: tuple[float, float], radius_mm: float) -> np.ndarray:
        """Pixels whose centres lie within radius_mm of centre_mm: bool (ny, nx)."""
        x, y = self.coords_mm()
        return (x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 <= radius_mm**2


@dataclass(frozen=True)
class RoiStats:
    """Statistics of one map inside one ROI: over the n_mapped finite voxels of n_voxels."""

    mean: float
    median: float
    std: float
    n_voxels: int
    n_mapped: int

    @property
    def mapped_fraction(self) -> float:
        return self.n_mapped / self.n_voxels if self.n_voxels else 0.0

    @property
    def cv_pct(self) -> float:
        """Within-ROI coefficient of variation, %."""
        return 100.0 * self.std / abs(self.mean) if self.n_mapped and self.mean else math.nan

    def to_json(self) -> dict:
        return {"mean": self.mean, "median": self.median, "std": self.std, "cv_pct": self.cv_pct,
                "n_voxels": self.n_voxels, "n_mapped": self.n_mapped}


def roi_stats(values: np.ndarray, roi: np.ndarray) -> RoiStats:
    """Mean, median and std (ddof 1) of the finite values inside the boolean ROI."""
    inside = np.asarray(values, dtype=np.float64)[roi]
    finite = inside[np.isfinite(inside)]
    if finite.size == 0:
        return RoiStats(math.nan, math.nan, math.nan, int(inside.size), 0)
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return RoiStats(float(finite.mean()), float(np.median(finite)), std, int(inside.size), int(finite.size))


def eroded_radius_mm(sphere_radius_mm: float, erosion_mm: float, grid: PixelGrid) -> float:
    """The ROI radius: the sphere's radius less the erosion, but at least one pixel."""
    return max(sphere_radius_mm - erosion_mm, max(grid.dx_mm, grid.dy_mm))


def sphere_stats(
    maps: dict[str, np.ndarray], grid: PixelGrid, centres_mm: dict[int, tuple[float, float]], radius_mm: float
) -> dict[int, dict[str, RoiStats]]:
    """{sphere: {quantity: RoiStats}} for every map (2-D, on `grid`) and every sphere centre."""
    out = {}
    for sphere, centre in centres_mm.items():
        roi = grid.disc(centre, radius_mm)
        out[sphere] = {key: roi_stats(values, roi) for key, values in maps.items()}
    return out
