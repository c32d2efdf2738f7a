"""NIST system phantom geometry and values, brain phantom, user maps, placement, B1."""

from __future__ import annotations

import csv
import math
from importlib import resources

import numpy as np
import pytest

from mrf_core.sim.phantoms import (
    B1_STEP,
    BRAIN_TISSUES,
    NIST_FILL_LABEL,
    Phantom,
    PhantomError,
    Placement,
    brain_phantom,
    load_maps,
    make_phantom,
    nist_phantom,
    nist_reference,
    pixel_coords_mm,
)


def _table(batch, field, array):
    text = resources.files("mrf_core").joinpath("data", "nist_system_phantom_reference.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    out = {}
    for r in rows:
        if (int(r["batch"]), float(r["field_T"]), r["array"]) == (batch, field, array):
            out.setdefault(int(r["sphere"]), {})[r["quantity"]] = float(r["value_ms"])
    return out


def _centroid_mm(phantom, label, slice_index=0):
    x, y = pixel_coords_mm(phantom.matrix, phantom.fov_mm)
    m = phantom.labels[slice_index] == label
    return np.array([x[m].mean(), y[m].mean()]), int(m.sum())


@pytest.mark.parametrize("array, batch, field", [("NiCl2", 1, 3.0), ("MnCl2", 2, 3.0), ("NiCl2", 1, 1.5)])
def test_nist_spheres_carry_the_reference_values(array, batch, field):
    phantom = nist_phantom(array, field_t=field, batch=batch, matrix=128, fov_mm=256.0)
    table = _table(batch, field, array)
    assert len(table) == 14
    for sphere, values in table.items():
        inside = phantom.labels[0] == sphere
        np.testing.assert_array_equal(phantom.t1_ms[0][inside], np.float32(values["T1"]))
        np.testing.assert_array_equal(phantom.t2_ms[0][inside], np.float32(values["T2"]))
    t1 = [table[n]["T1"] for n in range(1, 15)]
    assert int(np.argmax(t1)) == 0  # sphere 1 has the longest T1


def test_nist_geometry_15mm_spheres_on_50_and_28mm_rings():
    phantom = nist_phantom("NiCl2", matrix=256, fov_mm=256.0)  # 1 mm pixels
    for sphere in range(1, 15):
        centre, n_pixels = _centroid_mm(phantom, sphere)
        ring = 50.0 if sphere <= 10 else 28.0
        assert np.hypot(*centre) == pytest.approx(ring, abs=0.3)
        assert n_pixels == pytest.approx(math.pi * 7.5**2, rel=0.06)
    top, _ = _centroid_mm(phantom, 1)
    assert top[1] == pytest.approx(-50.0, abs=0.3)  # sphere 1 at the top of a displayed image
    right, _ = _centroid_mm(phantom, 3)  # clockwise: sphere 3 is 72 deg on, to the right
    assert right[0] > 40
    fill = phantom.labels[0] == NIST_FILL_LABEL
    x, y = pixel_coords_mm(256, 256.0)
    assert np.hypot(x[fill], y[fill]).max() <= 100.0 and np.hypot(x[fill], y[fill]).min() > 84.0
    assert phantom.pd[0][np.hypot(x, y) < 80].max() == 1.0 and not phantom.mask[0][np.hypot(x, y) > 101].any()


def test_placement_moves_rotates_and_scales_the_object():
    base = nist_phantom("MnCl2", matrix=256, fov_mm=256.0)
    moved = nist_phantom("MnCl2", matrix=256, fov_mm=256.0, placement=Placement((20.0, -10.0), 30.0, 1.2))
    c0, n0 = _centroid_mm(base, 1)
    c1, n1 = _centroid_mm(moved, 1)
    a = math.radians(30.0)
    rotated = 1.2 * np.array([math.cos(a) * c0[0] - math.sin(a) * c0[1], math.sin(a) * c0[0] + math.cos(a) * c0[1]])
    np.testing.assert_allclose(c1, rotated + [20.0, -10.0], atol=0.4)
    assert n1 / n0 == pytest.approx(1.44, rel=0.06)
    with pytest.raises(PhantomError, match="scale"):
        Placement(scale=0.0)


def test_nist_missing_reference_lists_what_exists():
    with pytest.raises(PhantomError, match="batch 2 at field 1.5 T.*batch 1 at 1.5 T"):
        nist_reference(1.5, 2, "NiCl2")
    with pytest.raises(PhantomError, match="NIST array"):
        nist_reference(3.0, 1, "CuSO4")


def test_b1_field_is_quantised_centre_bright_and_zero_outside():
    phantom = nist_phantom("NiCl2", matrix=128, fov_mm=256.0, b1_amplitude=0.1)
    b1 = phantom.b1[phantom.mask]
    np.testing.assert_allclose(b1 / B1_STEP, np.round(b1 / B1_STEP), atol=1e-3)
    assert b1.max() == pytest.approx(1.1, abs=B1_STEP) and b1.min() == pytest.approx(1.0, abs=2 * B1_STEP)
    assert not phantom.b1[~phantom.mask].any()
    with pytest.raises(PhantomError, match="b1 amplitude"):
        nist_phantom("NiCl2", matrix=64, b1_amplitude=0.7)


def test_brain_has_every_tissue_with_continuous_values():
    phantom = brain_phantom(field_t=1.5, matrix=128, fov_mm=240.0, n_slices=3)
    names = phantom.label_names
    for code, name in names.items():
        inside = phantom.labels[1] == code
        assert inside.sum() > 10, name
        t1, t2 = BRAIN_TISSUES[name][1.5]
        assert np.median(phantom.t1_ms[1][inside]) == pytest.approx(t1, rel=0.06)  # texture 3 %
        assert np.median(phantom.t2_ms[1][inside]) == pytest.approx(t2, rel=0.06)
    t1 = phantom.t1_ms[phantom.mask]
    assert len(np.unique(t1)) > 0.9 * t1.size  # texture: no shared values, no grid
    assert phantom.mask[0].sum() == phantom.mask[2].sum() < phantom.mask[1].sum()  # the head narrows off-centre
    assert not np.array_equal(phantom.t1_ms[0], phantom.t1_ms[2])
    with pytest.raises(PhantomError, match="field_t = 7"):
        brain_phantom(field_t=7.0, matrix=32)


def test_user_maps_from_npz_npy_and_nifti(tmp_path):
    n = 32
    x, y = pixel_coords_mm(n, 200.0)
    disc = np.hypot(x, y) < 60
    rng = np.random.default_rng(0)
    t1 = np.where(disc, rng.uniform(500, 1500, (n, n)), 0.0)
    t2 = np.where(disc, rng.uniform(40, 120, (n, n)), 0.0)
    pd = disc * 0.8
    np.savez(tmp_path / "m.npz", t1_ms=t1, t2_ms=t2, pd=pd)
    same = load_maps(tmp_path / "m.npz", matrix=n, fov_mm=200.0, field_t=3.0)
    np.testing.assert_allclose(same.t1_ms[0], t1, rtol=1e-5)
    assert same.b1[same.mask].min() == 1.0 and same.field_t == 3.0
    np.save(tmp_path / "m.npy", np.stack([t1, t2, pd, np.where(disc, 0.9, 0.0)]))
    finer = load_maps(tmp_path / "m.npy", matrix=2 * n, fov_mm=200.0)
    assert finer.mask.sum() == pytest.approx(4 * disc.sum(), rel=0.1)
    # linear inside the object, never mixing in the zeros outside
    assert finer.t1_ms[finer.mask].min() >= t1[disc].min() - 1e-3
    np.testing.assert_allclose(finer.b1[finer.mask], 0.9, atol=1e-6)
    nibabel = pytest.importorskip("nibabel")
    volume = np.stack([t1, t2, pd], axis=-1).transpose(1, 0, 2)[:, :, None, :]  # (x, y, z, map)
    nibabel.save(nibabel.Nifti1Image(volume, np.diag([200.0 / n, 200.0 / n, 5.0, 1.0])), tmp_path / "m.nii.gz")
    nifti = load_maps(tmp_path / "m.nii.gz", matrix=n, fov_mm=200.0)
    assert nifti.attrs["source_fov_mm"] == pytest.approx(200.0)
    np.testing.assert_allclose(nifti.t1_ms[0], t1, rtol=1e-5)


def test_bad_maps_name_the_problem(tmp_path):
    n = 16
    pd = np.ones((n, n))
    np.savez(tmp_path / "missing.npz", t1_ms=pd * 800, pd=pd)
    with pytest.raises(PhantomError, match="'t2_ms'"):
        load_maps(tmp_path / "missing.npz", matrix=n)
    np.save(tmp_path / "shape.npy", np.ones((2, n, n)))
    with pytest.raises(PhantomError, match=r"shape \(2, 16, 16\)"):
        load_maps(tmp_path / "shape.npy", matrix=n)
    np.savez(tmp_path / "unphysical.npz", t1_ms=pd * 100, t2_ms=pd * 300, pd=pd)
    with pytest.raises(PhantomError, match="t2_ms.*exceeds 2 x t1_ms"):
        load_maps(tmp_path / "unphysical.npz", matrix=n, fov_mm=300.0)
    (tmp_path / "maps.txt").write_text("x")
    with pytest.raises(PhantomError, match="unknown phantom 'maps.txt'"):
        make_phantom(str(tmp_path / "maps.txt").replace(str(tmp_path) + "/", ""))
    with pytest.raises(PhantomError, match="does not exist"):
        make_phantom(str(tmp_path / "absent.npz"))
    with pytest.raises(PhantomError, match="unknown phantom 'nist-t3'"):
        make_phantom("nist-t3")


def test_phantom_validation_names_map_and_voxel():
    shape = (1, 8, 8)
    ones = np.ones(shape)
    with pytest.raises(PhantomError, match=r"t1_ms\[slice, row, col = \(0, 0, 0\)\] = 0"):
        Phantom("x", ones * 0, ones, ones, ones, ones, {}, 100.0)
    with pytest.raises(PhantomError, match="b1"):
        Phantom("x", ones * 900, ones * 50, ones, ones * 4, ones, {}, 100.0)
    two = np.ones((2, 8, 8))
    pd = two.copy()
    pd[1] = 0
    with pytest.raises(PhantomError, match="slice 1 has no object voxel"):
        Phantom("x", two * 900, two * 50, pd, two, two, {}, 100.0)


def test_make_phantom_names():
    assert make_phantom("nist", matrix=64).n_slices == 2
    assert make_phantom("nist-t2", matrix=64).attrs["arrays"] == '["MnCl2"]'
    assert make_phantom("brain", matrix=64, n_slices=3).n_slices == 3
