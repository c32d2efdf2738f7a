"""Phantom QA of one map file: checks, slice and sphere numbering, ROI statistics, evaluation.

Input checks, each a QAError that says what was found: a T1/T2 unit other than ms (from the images'
MRF_Unit meta, or values that look like seconds), no T2 map, no field of view, a field of view too small
for the sphere array or pixels too coarse for 15 mm spheres, no mapped voxel, no sphere array.

Slice: the one asked for, else the slice whose spheres agree best with the asked array (a map file of `mrf
simulate --phantom nist` holds both arrays); array 'auto' takes the array that agrees best. Numbering: of the
candidate layouts that fit the blobs equally well (mrf_core.qa.spheres), the one whose ROI T1 and T2 agree
best with the reference, by the median over spheres of |log(measured / reference)| averaged over T1 and T2
(the "agreement"). The wrong plate is caught the same way: if the other array's reference agrees twice as
well, and the asked one is off by more than ~20 %, the maps are of the other plate.
"""

from __future__ import annotations

import datetime
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import mrf_core
from mrf_core.io.map_images import USHORT_MAX, ImageGeometry, MapFile, read_map_file
from mrf_core.mapping.maps import B1_META, B1_SOURCE_META, PROFILE_META, MapsError
from mrf_core.qa import QAError
from mrf_core.qa.metrics import Evaluation, Tolerances, evaluate
from mrf_core.qa.references import (
    QUANTITIES,
    MeasurableRange,
    Reference,
    array_name,
    nist_qa_reference,
    other_array,
)
from mrf_core.qa.roi import PixelGrid, RoiStats, eroded_radius_mm, sphere_stats
from mrf_core.qa.spheres import MIN_SPHERES_FOUND, SCALE_RANGE, SphereLayout, foreground, locate_spheres
from mrf_core.sim.phantoms import NIST_ARRAYS, NIST_RING_RADIUS_MM, NIST_SPHERE_RADIUS_MM

log = logging.getLogger(__name__)

SCHEMA = "mrf-qa-result/1"
MAX_PIXEL_MM = 3.0  # a 15 mm sphere then still spans 5 pixels and its eroded ROI ~10 voxels
ARRAY_EXTENT_MM = 2 * (NIST_RING_RADIUS_MM + NIST_SPHERE_RADIUS_MM)
WRONG_ARRAY_AGREEMENT = math.log(1.2)


@dataclass(frozen=True)
class QASettings:
    """How QA runs: the map the spheres are found in ('pd' or 't1'), the ROI erosion (mm), the ROI
    statistic that is 'measured' (mean or median), tolerances, the measurable range, the least number of
    spheres that must be found, and the slice (None: chosen)."""

    detect_from: str = "pd"
    erosion_mm: float = 2.0
    statistic: str = "mean"
    tolerances: Tolerances = Tolerances()
    measurable: MeasurableRange = MeasurableRange()
    min_spheres_found: int = MIN_SPHERES_FOUND
    slice_index: int | None = None

    def to_json(self) -> dict:
        return {
            "detect_from": self.detect_from, "erosion_mm": self.erosion_mm, "statistic": self.statistic,
            "tolerances": self.tolerances.__dict__, "measurable": self.measurable.__dict__,
            "min_spheres_found": self.min_spheres_found,
        }


@dataclass
class QAResult:
    """Everything QA found about one slice of one map file; `to_json()` is results.json."""

    source: dict
    reference: Reference
    settings: QASettings
    grid: PixelGrid
    layout: SphereLayout
    roi_radius_mm: float
    stats: dict[int, dict[str, RoiStats]]
    evaluation: Evaluation
    maps: dict[str, np.ndarray]
    agreement: float
    warnings: list[str] = field(default_factory=list)
    corrections: dict[str, dict] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    geometry: ImageGeometry | None = None  # the analysed slice's position and directions (figures' orientation)
    software: str = f"mrf-gadgetron {mrf_core.__version__}"

    @property
    def passed(self) -> bool:
        return self.evaluation.passed

    def to_json(self) -> dict:
        spheres = []
        for n in sorted(self.stats):
            entry = {"sphere": n, "centre_mm": list(self.layout.centres_mm[n]),
                     "centre_px": list(self.grid.to_pixel(*self.layout.centres_mm[n])),
                     "found": self.layout.found[n], "roi_radius_mm": self.roi_radius_mm}
            for q in QUANTITIES:
                result = self.evaluation.sphere(n, q).to_json()
                entry[q] = {k: v for k, v in result.items() if k not in ("sphere", "quantity")}
            if "pd" in self.stats[n]:
                entry["pd"] = self.stats[n]["pd"].to_json()
            spheres.append(entry)
        return _finite_or_null({
            "schema": SCHEMA,
            "created": self.created,
            "software": {"name": "mrf-gadgetron", "version": mrf_core.__version__},
            "passed": self.passed,
            "failures": self.evaluation.failures,
            "warnings": self.warnings,
            "source": self.source,
            "phantom": {"name": "nist", **self.reference.to_json()},
            "placement": self.layout.to_json(),
            "pixel_mm": [self.grid.dy_mm, self.grid.dx_mm],
            "agreement_median_abs_log": self.agreement,
            "settings": self.settings.to_json(),
            "metrics": {q: m.to_json() for q, m in self.evaluation.metrics.items()},
            "corrections": self.corrections,
            "spheres": spheres,
        })


def _finite_or_null(value):
    """JSON has no NaN: non-finite floats become null, recursively."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def agreement(stats: dict[int, dict[str, RoiStats]], reference: Reference, statistic: str = "median") -> float:
    """Median over spheres of |log(measured / reference)| averaged over T1 and T2 (inf: nothing measured)."""
    scores = []
    for n, by_quantity in stats.items():
        logs = []
        for q in QUANTITIES:
            value = getattr(by_quantity[q], statistic)
            if math.isfinite(value) and value > 0:
                logs.append(abs(math.log(value / reference.value(n, q))))
        if len(logs) == len(QUANTITIES):
            scores.append(sum(logs) / len(logs))
    return float(np.median(scores)) if scores else math.inf


def check_maps(map_file: MapFile, path: str | Path) -> None:
    """Units, quantities and content of a map file (module docstring); a QAError naming the problem."""
    for key, unit in (("t1_ms", "ms"), ("t2_ms", "ms")):
        if key not in map_file.maps:
            raise QAError(f"{path} has no {key[:2].upper()} map (has: {', '.join(map_file.maps)})")
        stated = map_file.meta.get(key, {}).get("MRF_Unit")
        stated = stated[0] if isinstance(stated, list) else stated
        if stated is not None and stated != unit:
            raise QAError(f"{path}: the {key[:2].upper()} map is in {stated!r}, QA needs {unit}")
        values = map_file.maps[key]
        finite = values[np.isfinite(values) & (values > 0)]
        if finite.size == 0:
            raise QAError(f"{path}: the {key[:2].upper()} map has no mapped voxel: no phantom in these maps")
        if key == "t1_ms" and np.median(finite) < 5.0:
            raise QAError(f"{path}: T1 values have median {np.median(finite):.3g}: they look like seconds, "
                          "QA needs ms")


def slice_grid(map_file: MapFile, position: int) -> PixelGrid:
    """The pixel grid of the position-th slice, checked for size (module docstring)."""
    slice_index = map_file.slices[position]
    shape = map_file.maps["t1_ms"].shape[1:]
    geometry = map_file.geometry.get(slice_index)
    grid = PixelGrid.from_fov(shape, geometry.fov_mm if geometry else (0.0, 0.0))
    extent = min(grid.nx * grid.dx_mm, grid.ny * grid.dy_mm)
    if extent < ARRAY_EXTENT_MM * SCALE_RANGE[0]:
        raise QAError(f"slice {slice_index}: the maps cover {grid.nx * grid.dx_mm:.0f} x {grid.ny * grid.dy_mm:.0f} mm,"
                      f" too small for the {ARRAY_EXTENT_MM:.0f} mm sphere array (is the FOV in the header right?)")
    if max(grid.dx_mm, grid.dy_mm) > MAX_PIXEL_MM:
        raise QAError(f"slice {slice_index}: pixels of {grid.dx_mm:.2f} x {grid.dy_mm:.2f} mm are too coarse for "
                      f"15 mm spheres (QA needs <= {MAX_PIXEL_MM:g} mm)")
    return grid


def _best_layout(layouts: list[SphereLayout], maps: dict[str, np.ndarray], grid: PixelGrid, radius_mm: float,
                 reference: Reference) -> tuple[SphereLayout, dict, float]:
    """The candidate numbering whose ROI values agree best with the reference."""
    best = None
    for layout in layouts:
        stats = sphere_stats(maps, grid, layout.centres_mm, radius_mm)
        score = agreement(stats, reference)
        if best is None or score < best[2]:
            best = (layout, stats, score)
    return best


def analyse_slice(maps: dict[str, np.ndarray], grid: PixelGrid, reference: Reference,
                  settings: QASettings = QASettings()) -> tuple[SphereLayout, dict, float, float]:
    """Find and number the spheres of one slice's maps {t1_ms, t2_ms, pd, ...} (2-D each): the layout,
    the ROI statistics, the ROI radius and the agreement with the reference."""
    source = maps.get(settings.detect_from if settings.detect_from != "t1" else "t1_ms")
    if source is None:
        raise QAError(f"sphere detection from {settings.detect_from!r}: the maps have no such map")
    layouts = locate_spheres(foreground(source, settings.detect_from), grid, settings.min_spheres_found)
    radius_mm = eroded_radius_mm(layouts[0].sphere_radius_mm, settings.erosion_mm, grid)
    layout, stats, score = _best_layout(layouts, maps, grid, radius_mm, reference)
    return layout, stats, radius_mm, score


def run_qa(
    path: str | Path,
    array: str,
    field_t: float,
    batch: int = 1,
    temperature_C: float | None = None,
    coefficients: dict | None = None,
    settings: QASettings = QASettings(),
    group: str | None = None,
) -> QAResult:
    """QA of the maps in a map file (ISMRMRD images in the client layout) against the NIST `array` plate
    ('t1', 't2', or 'auto': the plate whose reference the spheres agree with best)."""
    arrays = list(NIST_ARRAYS) if array == "auto" else [array_name(array)]
    references = [nist_qa_reference(a, field_t, batch, temperature_C, coefficients) for a in arrays]
    try:
        map_file = read_map_file(path, group)
    except MapsError as exc:
        raise QAError(str(exc)) from exc
    check_maps(map_file, path)
    positions = range(len(map_file.slices))
    if settings.slice_index is not None:
        if settings.slice_index not in map_file.slices:
            raise QAError(f"{path} has no slice {settings.slice_index} (has: {map_file.slices})")
        positions = [map_file.slices.index(settings.slice_index)]
    tried, errors = [], []
    for position in positions:
        maps = {k: v[position] for k, v in map_file.maps.items()}
        for reference in references:
            try:
                grid = slice_grid(map_file, position)
                layout, stats, radius_mm, score = analyse_slice(maps, grid, reference, settings)
            except QAError as exc:
                errors.append(f"slice {map_file.slices[position]}: {exc}")
                break  # the same for either array
            tried.append((score, position, reference, maps, grid, layout, stats, radius_mm))
    if not tried:
        raise QAError("; ".join(errors))
    score, position, reference, maps, grid, layout, stats, radius_mm = min(tried, key=lambda item: item[0])
    slice_index = map_file.slices[position]
    other = nist_qa_reference(other_array(reference.array), field_t, batch)
    other_score = agreement(stats, other)
    if len(arrays) == 1 and score > WRONG_ARRAY_AGREEMENT and other_score < score / 2:
        raise QAError(f"slice {slice_index} looks like the {other.array} array, not {reference.array}: its spheres "
                      f"differ from the {other.array} reference by a median {_pct(other_score)} and from the "
                      f"{reference.array} reference by {_pct(score)} (run with --array "
                      f"{'t2' if other.array == 'MnCl2' else 't1'})")
    evaluation = evaluate(stats, reference, settings.measurable, settings.tolerances, settings.statistic)
    warnings = list(reference.notes)
    if errors:
        warnings.extend(f"not analysed: {e}" for e in errors)
    warnings.extend(saturation_warnings(map_file, reference))
    warnings.extend(quantisation_notes(stats))
    corrections = {q: map_corrections(map_file, q) for q in QUANTITIES}
    if any(c["b1_corrected"] is False for c in corrections.values()):
        warnings.append("B1 not corrected: the maps assume B1 = 1 (no B1 map, no B1 estimate); FISP-MRF T2 (and T1 "
                        "less so) is biased where the transmit field differs")
    hint = b1_bias_hint(evaluation, corrections["t2_ms"]["b1_corrected"])
    if hint:
        warnings.append(hint)
    if layout.mirrored:
        warnings.append("the sphere numbering runs anticlockwise: the phantom (or the image) is mirrored")
    missing = [n for n, found in layout.found.items() if not found]
    if missing:
        warnings.append(f"no blob at spheres {', '.join(map(str, missing))}: their ROIs sit where the template "
                        "puts them")
    log.info("QA %s slice %d: %d/14 spheres on blobs, rotation %.1f deg, scale %.3f, %s", path, slice_index,
             layout.n_found, layout.rotation_deg, layout.scale, "PASS" if evaluation.passed else "FAIL")
    source = {"path": str(path), "group": map_file.group, "slice": slice_index, "n_slices": len(map_file.slices),
              "mapper": _meta_value(map_file, "MRF_Mapper")}
    return QAResult(source, reference, settings, grid, layout, radius_mm, stats, evaluation, maps, score, warnings,
                    corrections, geometry=map_file.geometry.get(slice_index))


def quantisation_notes(stats: dict[int, dict[str, RoiStats]]) -> list[str]:
    """ROIs whose voxels all hold one value (CV 0 %): a dictionary mapper returns grid values, so the
    variation inside is below one grid step, not absent."""
    notes = []
    for q in QUANTITIES:
        flat = [n for n in sorted(stats) if q in stats[n] and stats[n][q].n_mapped > 1 and stats[n][q].std == 0]
        if flat:
            notes.append(f"{q[:2].upper()} ROI CV 0 % at spheres {', '.join(map(str, flat))}: every voxel holds the "
                         "same value, one point of the mapper's grid (a dictionary's T1/T2 step), so the variation "
                         "is below one grid step, not zero")
    return notes




def map_corrections(map_file: MapFile, quantity: str) -> dict:
    """How a map handled B1 and the slice profile, from its image meta (None: the meta does not say, e.g.
    maps from another reconstruction)."""
    b1 = _meta_value(map_file, B1_META, quantity)
    profile = _meta_value(map_file, PROFILE_META, quantity)
    return {"b1_corrected": None if b1 is None else b1 != "none", "b1_correction": b1,
            "b1_source": _meta_value(map_file, B1_SOURCE_META, quantity),
            "slice_profile_corrected": None if profile is None else profile != "none", "slice_profile": profile}


def b1_bias_hint(evaluation: Evaluation, b1_corrected: bool | None) -> str | None:
    """A hint when B1 was not corrected and the counted T2 spheres fail the way a B1 error makes them: three or
    more failing, all with one sign, and at least 80 % of the counted spheres off in that direction."""
    if b1_corrected:
        return None
    t2 = [r for r in evaluation.spheres if r.quantity == "t2_ms" and r.counted and math.isfinite(r.error_pct)]
    failed = [r for r in t2 if r.passed is False]
    signs = {math.copysign(1.0, r.error_pct) for r in failed}
    if len(failed) < 3 or len(signs) != 1:
        return None
    sign = signs.pop()
    same = sum(math.copysign(1.0, r.error_pct) == sign for r in t2)
    if same < 0.8 * len(t2):
        return None
    errors = [r.error_pct for r in failed]
    return (f"hint: T2 of spheres {', '.join(str(r.sphere) for r in failed)} is {'low' if sign < 0 else 'high'} "
            f"({min(errors):+.1f} to {max(errors):+.1f} %), and {same} of {len(t2)} counted spheres err the same "
            "way: the pattern of a transmit-field (B1) error. Give a B1 map (setting b1_map) or map with a B1-axis "
            "dictionary (b1_values)")


def saturation_warnings(map_file: MapFile, reference: Reference) -> list[str]:
    """Maps stored as scaled ushort saturate at USHORT_MAX / ScaleRatio: name the spheres above it."""
    warnings = []
    for q in QUANTITIES:
        ratio = map_file.meta.get(q, {}).get("GADGETRON_ScaleRatio")
        if ratio is None:
            continue
        ceiling_ms = USHORT_MAX / float(ratio[0] if isinstance(ratio, list) else ratio)
        above = [n for n in reference.values_ms if reference.value(n, q) >= 0.99 * ceiling_ms]
        if above:
            warnings.append(f"the {q[:2].upper()} map is scaled ushort and saturates at {ceiling_ms:g} ms: spheres "
                            f"{', '.join(map(str, above))} cannot be measured (send float maps)")
    return warnings


def _pct(log_ratio: float) -> str:
    return f"{100 * (math.exp(log_ratio) - 1):.0f} %"


def _meta_value(map_file: MapFile, key: str, quantity: str = "t1_ms") -> str | None:
    value = map_file.meta.get(quantity, {}).get(key)
    return value[0] if isinstance(value, list) else value
