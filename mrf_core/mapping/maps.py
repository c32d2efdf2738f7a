"""Quantitative maps of one slice, and the table of quantities the product emits.

Whatever maps the coefficient images (dictionary matching or a network) ends in a `QuantitativeMaps`;
the image writer (mrf_core.io.map_images), the gadgets and QA read only this. Unmapped voxels (outside the
object mask, or failed) are NaN here; images carry them as 0, which scanner viewers display as background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrf_core.errors import MrfError


class MapsError(MrfError):
    """Maps of the wrong shape or kind: the message names the field and value."""


@dataclass(frozen=True)
class Quantity:
    """One emitted map: its attribute name, the scanner's name for it, its unit, its series offset, the
    display window (centre, width) in its unit, and the ushort scale ratio (stored = value * ratio)."""

    key: str
    role: str
    unit: str
    series_offset: int
    window: tuple[float, float] | None  # None: from the data (percentiles)
    ushort_ratio: float | None  # None: from the data (maximum -> 4095)


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("t1_ms", "T1", "ms", 0, (1500.0, 3000.0), 1.0),
    Quantity("t2_ms", "T2", "ms", 1, (150.0, 300.0), 1.0),
    Quantity("pd", "PD", "a.u.", 2, None, None),
    Quantity("b1", "B1", "relative", 3, (1.0, 1.0), 1000.0),
    Quantity("quality", "MatchQuality", "correlation", 4, (0.5, 1.0), 1000.0),
)
QUANTITY_BY_KEY = {q.key: q for q in QUANTITIES}
QUANTITY_BY_ROLE = {q.role: q for q in QUANTITIES}
PD_FRACTION = 0.1  # maps keep voxels whose |PD| exceeds this fraction of the 99th percentile (from_match)
# How the maps dealt with the transmit field (B1) and the slice profile; image meta MRF_B1Correction and
# MRF_SliceProfile, read back by QA. B1: "none" (B1 = 1 assumed), "map" (a measured B1 map), "estimated"
# (jointly, by a B1-axis dictionary or a network with a B1 output). Slice profile: "" (meta "none") when not
# modelled (an ideal rectangular profile assumed), else the RF pulse modelled (mrf_core.physics.slice_profile).
B1_CORRECTIONS = ("none", "map", "estimated")
B1_META, B1_SOURCE_META, PROFILE_META = "MRF_B1Correction", "MRF_B1Source", "MRF_SliceProfile"


@dataclass(frozen=True)
class QuantitativeMaps:
    """Maps of one slice, each float32 (ny, nx); NaN where unmapped. pd is the magnitude of the complex
    proton density (arbitrary units), quality the normalised correlation of signal and matched fingerprint,
    b1 None unless the mapper estimated it or took it from a B1 map. mapper names what made them ('dictionary',
    'network'); b1_correction, b1_source and slice_profile how B1 and the slice profile were handled."""

    slice_index: int
    t1_ms: np.ndarray
    t2_ms: np.ndarray
    pd: np.ndarray
    quality: np.ndarray
    mapper: str
    b1: np.ndarray | None = None
    b1_correction: str = "none"
    b1_source: str = ""
    slice_profile: str = ""

    def __post_init__(self) -> None:
        if self.b1_correction not in B1_CORRECTIONS:
            raise MapsError(f"b1_correction = {self.b1_correction!r} must be one of {B1_CORRECTIONS}")
        shape = self.t1_ms.shape
        if len(shape) != 2:
            raise MapsError(f"t1_ms has shape {shape}: maps are 2-D (ny, nx)")
        for key, value in self.arrays().items():
            if value.shape != shape:
                raise MapsError(f"{key} has shape {value.shape}, t1_ms has {shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.t1_ms.shape

    @property
    def mask(self) -> np.ndarray:
        """Voxels that were mapped."""
        return np.isfinite(self.t1_ms) & np.isfinite(self.t2_ms)

    def corrections_meta(self) -> dict[str, str]:
        """The image meta saying how B1 and the slice profile were handled (B1_META, PROFILE_META)."""
        source = {"none": "B1 = 1 assumed (no B1 map)", "estimated": "estimated with T1/T2"}
        return {B1_META: self.b1_correction, B1_SOURCE_META: self.b1_source or source.get(self.b1_correction, ""),
                PROFILE_META: self.slice_profile or "none"}

    def arrays(self) -> dict[str, np.ndarray]:
        """The maps present, by quantity key, in QUANTITIES order."""
        return {q.key: getattr(self, q.key) for q in QUANTITIES if getattr(self, q.key) is not None}

    @classmethod
    def from_match(
        cls, result, shape: tuple[int, int], slice_index: int, mapper: str, mask: np.ndarray | None = None,
        pd_fraction: float = PD_FRACTION, **corrections: str,
    ) -> QuantitativeMaps:
        """Maps from a MatchResult-like object (t1_ms, t2_ms, b1, pd complex, score), any layout of
        ny*nx voxels; voxels outside `mask`, unmatched, or with |PD| at most pd_fraction of the 99th
        percentile of the kept voxels' |PD| become NaN. The PD test drops the faint copies of an object's
        signal that locally-low-rank regularisation leaves in empty voxels next to it: they match the
        object's T1/T2 at a PD of a few %. b1 is kept only where it is finite somewhere, i.e. the mapper
        estimated it (or took it from a map). corrections: b1_correction, b1_source, slice_profile."""
        n_voxels = int(np.prod(shape))
        if np.size(result.t1_ms) != n_voxels:
            raise MapsError(f"{mapper} result has {np.size(result.t1_ms)} voxels, the slice {shape} has {n_voxels}")
        keep = np.isfinite(np.reshape(result.t1_ms, shape))
        if mask is not None:
            keep &= np.asarray(mask, dtype=bool).reshape(shape)
        pd_magnitude = np.abs(np.reshape(result.pd, shape))
        if pd_fraction > 0 and keep.any():
            keep &= pd_magnitude > pd_fraction * np.percentile(pd_magnitude[keep], 99.0)

        def field(values) -> np.ndarray:
            return np.where(keep, np.reshape(values, shape), np.nan).astype(np.float32)

        b1 = np.reshape(result.b1, shape)
        return cls(
            slice_index=slice_index,
            t1_ms=field(result.t1_ms),
            t2_ms=field(result.t2_ms),
            pd=field(pd_magnitude),
            quality=field(result.score),
            mapper=mapper,
            b1=field(b1) if np.isfinite(b1[keep]).any() else None,
            **corrections,
        )


def object_mask(image: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels of a (time-average) image brighter than `fraction` of its 99th-percentile magnitude: the
    object, so that background noise is not mapped into random T1/T2. All-zero images give an empty mask."""
    magnitude = np.abs(np.asarray(image))
    if not 0.0 < fraction < 1.0:
        raise MapsError(f"mask fraction = {fraction} must be in (0, 1)")
    finite = magnitude[np.isfinite(magnitude)]
    if finite.size == 0:
        return np.zeros(magnitude.shape, dtype=bool)
    reference = np.percentile(finite, 99.0)
    return np.isfinite(magnitude) & (magnitude > fraction * reference) & (reference > 0)


def map_nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """||estimate - truth|| / ||truth|| over `mask`; unmapped voxels (NaN) count as 0."""
    e = np.where(np.isfinite(estimate), estimate, 0.0)[mask]
    return float(np.linalg.norm(e - truth[mask]) / np.linalg.norm(truth[mask]))
