"""Find the 14 spheres of a NIST array plate in a map, wherever the phantom lies.

1. Blobs: connected components of the map's foreground (PD above a fraction of its 99th percentile, or
   every mapped T1 voxel) whose area fits a 15 mm sphere at a scale of 0.7-1.4 and that are roughly
   round. The bulk-water ring and noise specks fail the area test.
2. Template fit: every pair of blobs against every pair of template spheres (mrf_core.sim.phantoms layout)
   proposes a similarity transform q = z p + t (complex: z = scale * exp(i rotation)); the proposal
   that puts most template spheres on a blob wins, and a least-squares fit over those pairs refines it.
   Missing blobs (an unmapped short-T2 sphere) cost nothing but a vote.
3. Numbering: the layout's positions repeat under a 180 deg turn and a mirror (and under 36 deg turns
   when the inner ring is missing), so positions alone cannot number the spheres. Every transform that
   fits the blobs equally well is returned as a candidate; the caller picks the one whose ROI values
   agree best with the reference (sphere 1 has the longest T1 and T2 in both arrays), which also
   reveals a mirrored phantom.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mrf_core.qa import QAError
from mrf_core.qa.roi import PixelGrid
from mrf_core.sim.phantoms import NIST_SPHERE_RADIUS_MM, nist_sphere_centres_mm

log = logging.getLogger(__name__)

SCALE_RANGE = (0.7, 1.4)
PD_FOREGROUND_FRACTION = 0.3
MIN_SPHERES_FOUND = 6
_MAX_BLOBS = 40
_HYPOTHESIS_CHUNK = 2048
_OUTER_RING_STEP_DEG = 36.0


@dataclass(frozen=True)
class Blob:
    """A sphere-like connected component: centre (x, y) mm, area mm^2."""

    centre_mm: tuple[float, float]
    area_mm2: float


@dataclass(frozen=True)
class SphereLayout:
    """Where the spheres are: sphere -> centre (x, y) mm, whether a blob was found there, and the
    similarity transform object -> scanner (rotation turning +x towards +y, as mrf_core.sim.phantoms.Placement,
    applied after a mirror y -> -y when mirrored)."""

    centres_mm: dict[int, tuple[float, float]]
    found: dict[int, bool]
    shift_mm: tuple[float, float]
    rotation_deg: float
    scale: float
    mirrored: bool
    fit_rms_mm: float
    n_blobs: int

    @property
    def sphere_radius_mm(self) -> float:
        return NIST_SPHERE_RADIUS_MM * self.scale

    @property
    def n_found(self) -> int:
        return sum(self.found.values())

    def to_json(self) -> dict:
        return {
            "shift_mm": list(self.shift_mm), "rotation_deg": self.rotation_deg, "scale": self.scale,
            "mirrored": self.mirrored, "fit_rms_mm": self.fit_rms_mm, "n_blobs": self.n_blobs,
            "n_found": self.n_found, "sphere_radius_mm": self.sphere_radius_mm,
        }


def foreground(image: np.ndarray, source: str) -> np.ndarray:
    """The voxels that can belong to a sphere: 'pd' -> PD above 0.3 x its 99th percentile; 't1' -> mapped."""
    image = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(image) & (image > 0)
    if source == "t1":
        return finite
    if source != "pd":
        raise QAError(f"sphere detection source {source!r}: expected 'pd' or 't1'")
    if not finite.any():
        return finite
    return finite & (image > PD_FOREGROUND_FRACTION * np.percentile(image[finite], 99.0))


def find_blobs(mask: np.ndarray, grid: PixelGrid) -> list[Blob]:
    """Sphere-sized, roughly round connected components of a boolean mask (module docstring)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    sphere_area_mm2 = math.pi * NIST_SPHERE_RADIUS_MM**2
    low, high = 0.3 * SCALE_RANGE[0] ** 2 * sphere_area_mm2, 1.15 * SCALE_RANGE[1] ** 2 * sphere_area_mm2
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:] * grid.pixel_area_mm2
    keep = np.flatnonzero((areas >= low) & (areas <= high)) + 1
    x, y = grid.coords_mm()
    blobs = []
    for label in keep:
        inside = labels == label
        px, py = x[inside], y[inside]
        cov = np.cov(np.stack([px, py])) if px.size > 2 else np.zeros((2, 2))
        eig = np.linalg.eigvalsh(cov)
        if eig[0] <= 0 or eig[1] / eig[0] > 2.5**2:  # elongated: not a sphere section
            continue
        blobs.append(Blob((float(px.mean()), float(py.mean())), float(areas[label - 1])))
    blobs.sort(key=lambda b: abs(b.area_mm2 - sphere_area_mm2))
    return blobs[:_MAX_BLOBS]


def _template() -> tuple[np.ndarray, np.ndarray]:
    centres = nist_sphere_centres_mm()
    spheres = np.array(sorted(centres))
    return spheres, np.array([complex(*centres[n]) for n in spheres])


def _score(z: np.ndarray, t: np.ndarray, template: np.ndarray, blobs: np.ndarray, tol_mm: float):
    """Per hypothesis: template spheres within tol (x scale) of a blob, and the clipped residual sum."""
    placed = z[:, None] * template[None, :] + t[:, None]
    nearest = np.abs(placed[:, :, None] - blobs[None, None, :]).min(axis=2)
    tol = tol_mm * np.abs(z)[:, None]
    return (nearest <= tol).sum(axis=1), np.minimum(nearest, tol).sum(axis=1)


def _refine(z: complex, t: complex, template: np.ndarray, blobs: np.ndarray, tol_mm: float):
    """Least-squares similarity over the template spheres that sit on a blob; the matches and rms."""
    for _ in range(3):
        placed = z * template + t
        distance = np.abs(placed[:, None] - blobs[None, :])
        nearest = distance.argmin(axis=1)
        matched = distance[np.arange(template.size), nearest] <= tol_mm * abs(z)
        p, q = template[matched], blobs[nearest[matched]]
        pc, qc = p - p.mean(), q - q.mean()
        z = complex(np.sum(np.conj(pc) * qc) / np.sum(np.abs(pc) ** 2))
        t = complex(q.mean() - z * p.mean())
    placed = z * template + t
    distance = np.abs(placed[:, None] - blobs[None, :]).min(axis=1)
    matched = distance <= tol_mm * abs(z)
    rms = float(np.sqrt(np.mean(distance[matched] ** 2)))
    return z, t, matched, rms


def locate_spheres(
    mask: np.ndarray, grid: PixelGrid, min_found: int = MIN_SPHERES_FOUND, tol_mm: float | None = None
) -> list[SphereLayout]:
    """Every sphere layout that fits the mask's blobs equally well (module docstring, step 3); an error
    when fewer than `min_found` spheres can be placed on blobs."""
    blobs = find_blobs(mask, grid)
    if len(blobs) < min_found:
        raise QAError(f"found {len(blobs)} sphere-like blobs (15 mm discs at scale {SCALE_RANGE[0]}-"
                      f"{SCALE_RANGE[1]}), need at least {min_found}: no NIST sphere array in these maps")
    tol_mm = tol_mm if tol_mm is not None else max(2.5, 1.5 * max(grid.dx_mm, grid.dy_mm))
    spheres, template = _template()
    q = np.array([complex(*b.centre_mm) for b in blobs])
    j, k = np.nonzero(~np.eye(q.size, dtype=bool))
    a, b = np.triu_indices(template.size, 1)
    jj, aa = (m.ravel() for m in np.meshgrid(np.arange(j.size), np.arange(a.size), indexing="ij"))
    z_all = (q[k[jj]] - q[j[jj]]) / (template[b[aa]] - template[a[aa]])
    plausible = (np.abs(z_all) >= SCALE_RANGE[0]) & (np.abs(z_all) <= SCALE_RANGE[1])
    z_all, t_all = z_all[plausible], (q[j[jj]] - z_all * template[a[aa]])[plausible]
    best = (-1, math.inf, 0j, 0j)
    for start in range(0, z_all.size, _HYPOTHESIS_CHUNK):
        z, t = z_all[start:start + _HYPOTHESIS_CHUNK], t_all[start:start + _HYPOTHESIS_CHUNK]
        counts, residual = _score(z, t, template, q, tol_mm)
        i = np.lexsort((residual, -counts))[0]
        if (counts[i], -residual[i]) > (best[0], -best[1]):
            best = (int(counts[i]), float(residual[i]), complex(z[i]), complex(t[i]))
    if best[0] < min_found:
        raise QAError(f"{len(blobs)} sphere-like blobs, but at most {max(best[0], 0)} sit where a NIST array "
                      f"puts its spheres (need {min_found}): no NIST sphere array in these maps")
    z, t, matched, rms = _refine(best[2], best[3], template, q, tol_mm)
    log.debug("sphere fit: %d blobs, %d spheres on blobs, rms %.2f mm", q.size, matched.sum(), rms)
    layouts = []
    for mirrored in (False, True):
        base = np.conj(template) if mirrored else template
        for step in range(int(360 / _OUTER_RING_STEP_DEG)):
            zc = z * np.exp(1j * math.radians(_OUTER_RING_STEP_DEG * step))
            placed = zc * base + t
            distance = np.abs(placed[:, None] - q[None, :]).min(axis=1)
            found = distance <= tol_mm * abs(zc)
            if found.sum() < matched.sum():
                continue
            rotation = (math.degrees(np.angle(zc)) + 180.0) % 360.0 - 180.0
            layouts.append(SphereLayout(
                centres_mm={int(n): (float(p.real), float(p.imag)) for n, p in zip(spheres, placed, strict=True)},
                found={int(n): bool(f) for n, f in zip(spheres, found, strict=True)},
                shift_mm=(float(t.real), float(t.imag)), rotation_deg=float(rotation), scale=float(abs(zc)),
                mirrored=mirrored, fit_rms_mm=rms, n_blobs=int(q.size),
            ))
    return layouts
