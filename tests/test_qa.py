"""Phantom QA: sphere finding, ROI statistics, references, metrics and input checks on NIST plate maps
whose errors are known exactly (mrf_core.qa.synthetic)."""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pytest

from mrf_core.io.map_images import MapFile
from mrf_core.qa import QAError
from mrf_core.qa.analysis import QASettings, run_qa, saturation_warnings
from mrf_core.qa.metrics import Tolerances, bland_altman_pct, lins_ccc, r_squared
from mrf_core.qa.references import MeasurableRange, load_temperature_coefficients, nist_qa_reference
from mrf_core.qa.roi import PixelGrid, roi_stats
from mrf_core.qa.synthetic import nist_plate_maps, write_map_file
from mrf_core.sim.phantoms import Placement, nist_reference, nist_sphere_centres_mm

PLACEMENTS = [
    Placement(),
    Placement((14.0, -9.0), 23.0, 1.0),
    Placement((-25.0, 12.0), -137.0, 1.15),
    Placement((6.0, 18.0), 171.0, 0.85),
]


def _true_centre(placement: Placement, sphere: int, mirror: bool = False) -> np.ndarray:
    x, y = nist_sphere_centres_mm()[sphere]
    c, s = math.cos(math.radians(placement.rotation_deg)), math.sin(math.radians(placement.rotation_deg))
    centre = placement.scale * np.array([c * x - s * y, s * x + c * y]) + np.array(placement.shift_mm)
    return centre * (1, -1) if mirror else centre


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("placement", PLACEMENTS, ids=["centred", "turned", "turned-back-scaled", "half-turn-small"])
def test_spheres_found_at_their_true_places(tmp_path, placement, mirror):
    maps, _ = nist_plate_maps("t1", placement=placement, mirror=mirror, noise_rel=0.01)
    write_map_file(tmp_path / "m.h5", [maps])
    result = run_qa(tmp_path / "m.h5", "t1", 3.0)
    layout = result.layout
    for n in range(1, 15):
        assert np.linalg.norm(np.array(layout.centres_mm[n]) - _true_centre(placement, n, mirror)) < 0.6, n
    assert layout.n_found == 14 and layout.mirrored == mirror
    assert layout.scale == pytest.approx(placement.scale, abs=0.01)
    if not mirror:
        assert abs((layout.rotation_deg - placement.rotation_deg + 180) % 360 - 180) < 0.5
        assert np.allclose(layout.shift_mm, placement.shift_mm, atol=0.5)
    assert result.passed and result.source["slice"] == 0


def test_reported_errors_equal_the_errors_put_in(tmp_path):
    rng = np.random.default_rng(3)
    errors = {q: {n: float(rng.uniform(-9, 9)) for n in range(1, 15)} for q in ("t1_ms", "t2_ms")}
    errors["t1_ms"][4] = 4.9  # just inside the 5 % tolerance
    errors["t2_ms"][6] = -5.2  # just outside
    maps, _ = nist_plate_maps("t1", placement=Placement((-8, 5), 64.0, 1.05), error_pct=errors)
    write_map_file(tmp_path / "m.h5", [maps])
    result = run_qa(tmp_path / "m.h5", "t1", 3.0)
    reference = nist_reference(3.0, 1, "NiCl2")
    for q, column in (("t1_ms", 0), ("t2_ms", 1)):
        measured, truth = [], []
        for n in range(1, 15):
            r = result.evaluation.sphere(n, q)
            assert r.error_pct == pytest.approx(errors[q][n], abs=1e-3)
            assert r.reference_ms == reference[n][column]
            assert r.stats.std == pytest.approx(0.0, abs=1e-3 * r.reference_ms)
            assert r.stats.n_mapped == r.stats.n_voxels > 10
            counted = n <= 12  # NiCl2 13 and 14: T1 < 3 mean TRs
            assert r.counted == counted
            if counted:
                assert r.passed == (abs(errors[q][n]) <= 5.0)
                measured.append(reference[n][column] * (1 + errors[q][n] / 100))
                truth.append(reference[n][column])
            else:
                assert r.passed is None and "no T1 encoding" in r.why_not_counted
        metrics = result.evaluation.metrics[q]
        assert metrics.n_counted == 12
        assert metrics.r2 == pytest.approx(np.corrcoef(truth, measured)[0, 1] ** 2, abs=1e-7)
        assert metrics.bias_pct == pytest.approx(np.mean([errors[q][n] for n in range(1, 13)]), abs=1e-3)
        assert metrics.max_abs_error_pct == pytest.approx(max(abs(errors[q][n]) for n in range(1, 13)), abs=1e-3)
    failed = {f.split(":")[0] for f in result.evaluation.failures}
    expected = {f"sphere {n} {q[:2].upper()}" for q in errors for n in range(1, 13) if abs(errors[q][n]) > 5}
    assert failed == expected and not result.passed
    assert "sphere 6 T2" in failed and "sphere 4 T1" not in failed


def test_noisy_roi_means_match_the_truth_within_their_standard_error(tmp_path):
    maps, _ = nist_plate_maps("t2", placement=Placement((3, 3), 200.0), noise_rel=0.05, seed=1)
    write_map_file(tmp_path / "m.h5", [maps])
    result = run_qa(tmp_path / "m.h5", "t2", 3.0)
    for n in range(1, 15):
        r = result.evaluation.sphere(n, "t1_ms")
        assert abs(r.error_pct) < 4 * 5.0 / math.sqrt(r.stats.n_mapped), n
        assert r.stats.cv_pct == pytest.approx(5.0, rel=0.5)


def test_t2_plate_with_unmapped_inner_spheres_is_numbered_by_its_values(tmp_path):
    """With the inner ring gone the positions repeat every 36 deg; the T1/T2 values pick the numbering."""
    placement = Placement((0.0, -10.0), 100.0, 1.0)
    maps, _ = nist_plate_maps("t2", placement=placement, unmapped_spheres=(11, 12, 13, 14))
    write_map_file(tmp_path / "m.h5", [maps])
    result = run_qa(tmp_path / "m.h5", "t2", 3.0)
    for n in range(1, 11):
        assert np.linalg.norm(np.array(result.layout.centres_mm[n]) - _true_centre(placement, n)) < 0.6
    assert not any(result.layout.found[n] for n in (11, 12, 13, 14))
    sphere_11 = result.evaluation.sphere(11, "t2_ms")
    assert sphere_11.counted and sphere_11.stats.n_mapped == 0 and "ROI mapped" in sphere_11.failure
    assert [r.sphere for r in result.evaluation.spheres if r.quantity == "t2_ms" and not r.counted] == [12, 13, 14]
    assert not result.passed and any("no blob at spheres 11, 12, 13, 14" in w for w in result.warnings)


def test_both_arrays_in_one_file_pick_their_slice_and_the_wrong_array_is_named(tmp_path):
    t1, _ = nist_plate_maps("t1", placement=Placement((5, 0), 10.0))
    t2, _ = nist_plate_maps("t2", placement=Placement((5, 0), 10.0))
    write_map_file(tmp_path / "both.h5", [t1, dataclasses.replace(t2, slice_index=1)])
    assert run_qa(tmp_path / "both.h5", "t1", 3.0).source["slice"] == 0
    assert run_qa(tmp_path / "both.h5", "t2", 3.0).source["slice"] == 1
    with pytest.raises(QAError, match="looks like the MnCl2 array.*--array t2"):
        run_qa(tmp_path / "both.h5", "t1", 3.0, settings=QASettings(slice_index=1))
    auto = run_qa(tmp_path / "both.h5", "auto", 3.0, settings=QASettings(slice_index=1))
    assert auto.reference.array == "MnCl2" and auto.passed
    with pytest.raises(QAError, match="no slice 5"):
        run_qa(tmp_path / "both.h5", "t1", 3.0, settings=QASettings(slice_index=5))


def test_detection_from_the_t1_map_and_median_statistic(tmp_path):
    maps, _ = nist_plate_maps("t1", placement=Placement((0, 7), -45.0), error_pct={"t1_ms": {2: 2.0}})
    write_map_file(tmp_path / "m.h5", [maps])
    result = run_qa(tmp_path / "m.h5", "t1", 3.0, settings=QASettings(detect_from="t1", statistic="median"))
    assert result.evaluation.sphere(2, "t1_ms").error_pct == pytest.approx(2.0, abs=1e-3)
    assert result.layout.n_found == 14


def _brain_like_maps(tmp_path):
    rng = np.random.default_rng(0)
    maps, _ = nist_plate_maps("t1")
    yy, xx = np.mgrid[:128, :128]
    inside = (xx - 64) ** 2 / 50**2 + (yy - 64) ** 2 / 60**2 < 1
    values = {k: np.where(inside, rng.uniform(500, 1500, inside.shape), np.nan).astype(np.float32)
              for k in ("t1_ms", "t2_ms", "pd", "quality")}
    write_map_file(tmp_path / "brain.h5", [dataclasses.replace(maps, **values)])
    return tmp_path / "brain.h5"


def test_bad_inputs_give_clear_messages(tmp_path):
    with pytest.raises(QAError, match="no NIST sphere array"):
        run_qa(_brain_like_maps(tmp_path), "t1", 3.0)
    maps, _ = nist_plate_maps("t1")
    write_map_file(tmp_path / "s.h5", [dataclasses.replace(maps, t1_ms=maps.t1_ms / 1000)])
    with pytest.raises(QAError, match="look like seconds"):
        run_qa(tmp_path / "s.h5", "t1", 3.0)
    write_map_file(tmp_path / "u.h5", [maps], extra_meta={"MRF_Unit": "s"})
    with pytest.raises(QAError, match="T1 map is in 's'"):
        run_qa(tmp_path / "u.h5", "t1", 3.0)
    write_map_file(tmp_path / "f.h5", [maps], fov_mm=80.0)
    with pytest.raises(QAError, match="too small for the 115 mm sphere array"):
        run_qa(tmp_path / "f.h5", "t1", 3.0)
    coarse, _ = nist_plate_maps("t1", matrix=64)
    write_map_file(tmp_path / "c.h5", [coarse])
    with pytest.raises(QAError, match="too coarse"):
        run_qa(tmp_path / "c.h5", "t1", 3.0)
    empty = dataclasses.replace(maps, **{k: np.full_like(maps.t1_ms, np.nan) for k in ("t1_ms", "t2_ms")})
    write_map_file(tmp_path / "e.h5", [empty])
    with pytest.raises(QAError, match="no T1 map|no mapped voxel"):
        run_qa(tmp_path / "e.h5", "t1", 3.0)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(QAError, match="not a map file"):
        run_qa(tmp_path / "other.h5", "t1", 3.0)
    with pytest.raises(QAError, match="no NIST NiCl2 reference for batch 2 at field 1.5 T"):
        run_qa(tmp_path / "m.h5", "t1", 1.5, batch=2)
    with pytest.raises(QAError, match="expected t1 \\(NiCl2\\) or t2"):
        run_qa(tmp_path / "m.h5", "pd", 3.0)


def test_references_temperature_and_measurable_spheres(tmp_path):
    plain = nist_qa_reference("t1", 3.0, 1)
    assert plain.value(1, "t1_ms") == 1989 and plain.temperature_C is None and not plain.notes  # not given
    assert "not given: assumed 20 C" in plain.temperature_text()
    assert plain.to_json()["temperature_C"] is None and plain.to_json()["reference_temperature_C"] == 20
    warm = nist_qa_reference("t1", 3.0, 1, temperature_C=23.0)
    assert warm.values_ms == plain.values_ms and not warm.temperature_corrected and "20 C" in warm.notes[0]
    csv_path = tmp_path / "coef.csv"
    rows = [f"NiCl2,{n},{q},{-1.0 if q == 'T1' else 0.5}" for n in range(1, 15) for q in ("T1", "T2")]
    csv_path.write_text("array,sphere,quantity,pct_per_C\n" + "\n".join(rows) + "\n")
    corrected = nist_qa_reference("t1", 3.0, 1, 23.0, load_temperature_coefficients(csv_path))
    assert corrected.temperature_corrected
    assert corrected.value(1, "t1_ms") == pytest.approx(1989 * 0.97)
    assert corrected.value(1, "t2_ms") == pytest.approx(1465 * 1.015)
    with pytest.raises(QAError, match="lack MnCl2 sphere 1 T1"):
        nist_qa_reference("t2", 3.0, 1, 23.0, load_temperature_coefficients(csv_path))
    csv_path.write_text("array,sphere,quantity,pct_per_C\nNiCl2,one,T1,1\n")
    with pytest.raises(QAError, match="line 2"):
        load_temperature_coefficients(csv_path)
    rule = MeasurableRange()
    assert rule.why_not(1000, 100) is None
    assert "no T2 encoding" in rule.why_not(126.9, 7.9) and "no T1 encoding" in rule.why_not(30.8, 22.4)
    assert "mapper range" in rule.why_not(6000, 100)


def test_metric_definitions():
    ref = np.array([100.0, 300.0, 1000.0, 2000.0])
    assert r_squared(ref, 1.1 * ref) == pytest.approx(1.0)
    assert lins_ccc(ref, ref) == pytest.approx(1.0)
    assert lins_ccc(ref, 1.1 * ref) < 0.995  # a slope error lowers concordance but not R^2
    mean, low, high = bland_altman_pct(ref, ref * np.array([1.0, 1.02, 0.98, 1.0]))
    d = 100 * np.array([0, 0.02 / 1.01, -0.02 / 0.99, 0])
    assert mean == pytest.approx(d.mean()) and high - low == pytest.approx(2 * 1.96 * d.std(ddof=1))
    assert math.isnan(r_squared(ref[:2], ref[:2]))
    with pytest.raises(QAError, match="min_r2"):
        Tolerances(min_r2=-1)
    stats = roi_stats(np.array([1.0, 2.0, np.nan, 3.0]), np.array([True, True, True, False]))
    assert (stats.n_voxels, stats.n_mapped, stats.mean) == (3, 2, 1.5)
    grid = PixelGrid.from_fov((4, 8), (80.0, 20.0))
    assert (grid.dy_mm, grid.dx_mm) == (5.0, 10.0) and grid.to_pixel(10.0, -5.0) == (1.0, 5.0)


def test_saturated_ushort_maps_are_named():
    reference = nist_qa_reference("t2", 3.0)
    coarse = MapFile({}, [0], {"t2_ms": {"GADGETRON_ScaleRatio": "10"}, "t1_ms": {}}, {}, "g")
    (warning,) = saturation_warnings(coarse, reference)
    above = sorted(n for n in reference.values_ms if reference.value(n, "t2_ms") >= 0.99 * 409.5)
    assert above and f"saturates at 409.5 ms: spheres {', '.join(map(str, above))} " in warning
    assert saturation_warnings(dataclasses.replace(coarse, meta={"t2_ms": {"GADGETRON_ScaleRatio": "1"}}),
                               reference) == []
