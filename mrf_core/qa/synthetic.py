"""Maps of a NIST plate with known errors: QA's own test object.

The truth of a simulated plate (mrf_core.sim.phantoms) with every sphere's T1/T2 multiplied by
(1 + error_pct / 100) and optional Gaussian noise (relative std), written as a map file in the client
layout. QA run on it must report exactly the errors put in, wherever the plate was placed; tests and
the QA gadget's self-check use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrf_core.io.map_images import ImageGeometry, map_images, write_images
from mrf_core.mapping.maps import QuantitativeMaps
from mrf_core.qa.references import array_name
from mrf_core.sim.phantoms import Phantom, Placement, nist_phantom


def nist_plate_maps(
    array: str = "NiCl2",
    field_t: float = 3.0,
    batch: int = 1,
    matrix: int = 128,
    fov_mm: float = 300.0,
    placement: Placement | None = None,
    error_pct: dict[str, dict[int, float]] | None = None,
    noise_rel: float = 0.0,
    unmapped_spheres: tuple[int, ...] = (),
    mirror: bool = False,
    seed: int = 0,
) -> tuple[QuantitativeMaps, Phantom]:
    """One slice of maps of the plate (NaN outside the object) and the phantom it came from.
    error_pct: {"t1_ms"|"t2_ms": {sphere: %}}; unmapped_spheres are NaN (a mapper that gave up);
    mirror flips the image top-bottom (y -> -y), as a phantom put in back to front."""
    phantom = nist_phantom(array_name(array), field_t, batch, matrix, fov_mm, placement or Placement())
    labels = phantom.labels[0]
    maps = {"t1_ms": phantom.t1_ms[0].astype(np.float64), "t2_ms": phantom.t2_ms[0].astype(np.float64),
            "pd": phantom.pd[0].astype(np.float64)}
    for quantity, by_sphere in (error_pct or {}).items():
        for sphere, pct in by_sphere.items():
            maps[quantity][labels == sphere] *= 1.0 + pct / 100.0
    rng = np.random.default_rng(seed)
    outside = phantom.pd[0] <= 0
    for key, values in maps.items():
        if noise_rel:
            values *= 1.0 + noise_rel * rng.standard_normal(values.shape)
        values[outside | np.isin(labels, unmapped_spheres)] = np.nan
        if mirror:
            maps[key] = np.roll(values[::-1], 1, axis=0)  # row i -> row N - i: y -> -y on the grid
    quality = np.where(np.isfinite(maps["t1_ms"]), 1.0, np.nan)
    return QuantitativeMaps(0, *(maps[k].astype(np.float32) for k in ("t1_ms", "t2_ms", "pd")),
                            quality.astype(np.float32), mapper="truth"), phantom


def write_map_file(path: str | Path, slices: list[QuantitativeMaps], fov_mm: float = 300.0,
                   extra_meta: dict[str, str] | None = None) -> str:
    """Write maps (one QuantitativeMaps per slice, slice_index set) as a client-layout map file."""
    geometry = ImageGeometry(fov_mm=(fov_mm, fov_mm, 5.0))
    images = [im for maps in slices for im in map_images(maps, geometry, extra_meta=extra_meta)]
    return write_images(path, images, group="qa-synthetic")
